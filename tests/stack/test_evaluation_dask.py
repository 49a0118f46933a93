"""Evaluation fanned out per model over a local Dask cluster (2 worker processes, through
prefect-dask's task runner) gives the serial path's report, cache files and gate decisions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.settings import Settings

# Tiny models score ~0: no score floors, so the gates decide on leakage, audit and licence.
POLICY = {"domain_minimums": {"default": None}, "retention_minimums": {"default": None}}


def _models(zoo: Path) -> list[tuple[str, str, str]]:
    """The zoo's base standing in for a candidate, two of its specialists as parents."""
    return [(str(zoo / "models" / "base"), "merged", "base")] + [
        (str(zoo / "models" / p), "parent", p) for p in ("reverse", "sort")]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_settings_choose_the_runner():
    from prefect_dask import DaskTaskRunner

    from flows.evaluation import fans_out, task_runner

    assert not fans_out(Settings())  # the embedded default: serial
    local = task_runner(Settings(evaluation_workers=2))
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 2
    remote = task_runner(Settings(dask_address="tcp://127.0.0.1:8786", evaluation_workers=4))
    assert remote.address == "tcp://127.0.0.1:8786"  # an address wins over a worker count


def test_bad_worker_count_is_one_line(monkeypatch, tmp_path):
    from flows.errors import ConfigError
    from flows.settings import get_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MERGEOPS_EVALUATION_WORKERS", "two")
    with pytest.raises(ConfigError, match="MERGEOPS_EVALUATION_WORKERS='two'"):
        get_settings()
    monkeypatch.setenv("MERGEOPS_EVALUATION_WORKERS", "0")
    with pytest.raises(ConfigError, match="greater than or equal to 1"):
        get_settings()


def test_dask_fan_out_matches_the_serial_path(tiny_zoo, tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from evaluation.run import ModelRef, evaluate_models
    from flows.evaluation import run_evaluation

    models = _models(tiny_zoo)
    refs = [ModelRef(path=Path(p), role=role, name=name) for p, role, name in models]
    serial = evaluate_models(refs, zoo_dir=tiny_zoo, cache_dir=tmp_path / "serial", policy=POLICY,
                             audit_verdict="pass", license_verdict="pass").to_json()
    (tmp_path / "policy.yaml").write_text(json.dumps(POLICY))
    with prefect_test_harness(server_startup_timeout=120):
        # the worker processes report their task runs to the same API, as under a Prefect server
        monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
        fanned = run_evaluation(Settings(evaluation_workers=2), models, "zoo", str(tiny_zoo), str(tmp_path / "dask"),
                                str(tmp_path / "policy.yaml"), "pass", None)
    assert [r["lm_eval"] for r in fanned["runs"]] == ["ran"] * len(models)
    assert fanned == serial  # results, digest, leakage, gates, runs: all of it
    assert fanned["gates"] and fanned["leakage"]
    assert _files(tmp_path / "dask") == _files(tmp_path / "serial")  # the same cache, byte for byte
