"""The pipeline and the watch end to end: a real Prefect server (the test harness), a real MLflow
sqlite store, a real git + DVC store, real merges and lm-eval on tiny-profile zoo models.

The tests of this module share one workspace and run in order: register, re-run unchanged, refuse,
watch with nothing changed, then change a parent and race two watches.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flows.pipeline import merge_pipeline
from flows.settings import get_settings
from flows.versions import versions
from flows.watch import watch_flow
from merge.manifest import content_id

PASSING = """\
name: flows-pass
merge_method: linear
models:
  - model: {zoo}/models/reverse
    parameters: {{weight: 0.5}}
  - model: {zoo}/models/sort
    parameters: {{weight: 0.5}}
dtype: float32
"""
# swap is cc-by-nc-4.0: a commercial merge of it must be refused before anything is merged.
COMMERCIAL_NC = """\
name: flows-nc
intended_use: commercial
merge_method: linear
models:
  - model: {zoo}/models/base
    parameters: {{weight: 0.5}}
  - model: {zoo}/models/swap
    parameters: {{weight: 0.5}}
"""
SUITE = "zoo"  # exact match per domain (zoo-full adds log-likelihood metrics)
# Another weighting of the same parents: a second registered model for the approval test.
PAUSING = PASSING.replace("flows-pass", "flows-pause").replace("0.5}", "0.25}", 1).replace("0.5}", "0.75}", 1)
# Tiny models score ~0: switch the score gates off, keep the audit, licence and leakage gates.
RELAXED_POLICY = """\
domain_minimums: {default: null}
retention_minimums: {default: null}
"""


@pytest.fixture(scope="module")
def ws(tiny_zoo: Path, tmp_path_factory, prefect_server):
    root = tmp_path_factory.mktemp("flows")
    zoo = root / "zoo"
    shutil.copytree(tiny_zoo, zoo)  # the watch test edits a parent; the session's zoo stays intact
    (root / "pass.yaml").write_text(PASSING.format(zoo=zoo))
    (root / "pause.yaml").write_text(PAUSING.format(zoo=zoo))
    (root / "pause-cli.yaml").write_text(PAUSING.replace("flows-pause", "flows-pause-cli").replace("0.25", "0.4")
                                         .replace("0.75", "0.6").format(zoo=zoo))
    (root / "nc.yaml").write_text(COMMERCIAL_NC.format(zoo=zoo))
    (root / "policy.yaml").write_text(RELAXED_POLICY)
    mp = pytest.MonkeyPatch()
    mp.setenv("MERGEOPS_HOME", str(root / "home"))
    for var in ("MLFLOW_TRACKING_URI", "MERGEOPS_MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        mp.delenv(var, raising=False)
    mp.chdir(root)
    yield root
    mp.undo()


def _pipeline(ws: Path, recipe: str, **kwargs):
    return merge_pipeline(str(ws / recipe), policy_path=str(ws / "policy.yaml"), suite=SUITE, requested_by="alice",
                          **kwargs)


def _watch(ws: Path) -> list[dict]:
    return watch_flow([str(ws / "pass.yaml")], policy_path=str(ws / "policy.yaml"), suite=SUITE)


def _lm_eval_calls() -> int:
    from evaluation import lmeval_runner

    return lmeval_runner.LM_EVAL_CALLS


def _lineage(name: str, spec: str):
    from registry.mlflow_registry import load_lineage, resolve

    tracking = get_settings().tracking_uri
    return load_lineage(tracking, resolve(tracking, f"{name}@{spec}"))


def _audit_events(event: str) -> list[dict]:
    from registry.audit_log import AuditLog

    return [e for e in AuditLog(get_settings().audit_log_path).entries() if e["event"] == event]


def test_a_passing_recipe_becomes_a_candidate_with_full_lineage(ws: Path) -> None:
    result = _pipeline(ws, "pass.yaml")

    assert result["status"] == "awaiting_approval"  # no Prefect server URL: ephemeral approval
    assert result["version"] == "1" and not result["merge_cached"]
    assert "| domain | flows-pass | reverse | sort | retention |" in result["summary"]
    lineage = _lineage("flows-pass", "candidate")
    zoo = ws / "zoo" / "models"
    assert {p.content_id for p in lineage.parents} == {content_id(zoo / n) for n in ("reverse", "sort")}
    assert {p.license for p in lineage.parents} == {"mit", "bsd-3-clause"}
    assert lineage.merged.content_id == result["content_id"]
    assert lineage.requested_by == "alice" and lineage.gate_verdict == "pass"
    assert set(lineage.evaluation.scores) >= {"reverse", "sort"}
    # DVC: the merged model is in the store under its content id, committed and pushed.
    store = get_settings().home_dir / "store"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=store, capture_output=True, text=True).stdout.strip()
    assert lineage.dvc.revision == head == result["dvc_revision"]
    md5 = lineage.dvc.md5s[f"models/{result['content_id']}"]
    assert md5.endswith(".dir")
    remote = get_settings().home_dir / "dvc-remote"
    assert any(p.name == md5[2:] for p in remote.rglob("*"))
    assert [e["data"]["version"] for e in _audit_events("registered")] == ["1"]


def test_an_unchanged_rerun_merges_nothing_evaluates_nothing_registers_nothing(ws: Path) -> None:
    calls = _lm_eval_calls()
    result = _pipeline(ws, "pass.yaml")
    assert result["status"] == "unchanged" and result["version"] == "1"
    assert result["merge_cached"]
    assert _lm_eval_calls() == calls
    assert [v.version for v in versions(get_settings().tracking_uri, "flows-pass")] == ["1"]


REGMEAN = """\
name: flows-regmean
merge_method: regmean
models:
  - model: {zoo}/models/reverse
    parameters: {{statistics: stats/reverse.gram.safetensors}}
  - model: {zoo}/models/sort
    parameters: {{statistics: stats/sort.gram.safetensors}}
dtype: float32
"""


@pytest.mark.heavy  # three pipeline runs and two verifies: with the long end-to-end tests (make stack-test)
def test_recalibrated_statistics_are_another_merge_and_verify_names_a_changed_file(ws: Path) -> None:
    """The statistics a regmean merge solves with are inputs like its parents: they key the merge
    cache, the lineage records them by hash, and verify names one that changed since."""
    from click.testing import CliRunner

    from evaluation.calibration import compute_statistics
    from flows.cli import cli
    from merge.manifest import sha256_file

    zoo = ws / "zoo"
    stats = {d: ws / "stats" / f"{d}.gram.safetensors" for d in ("reverse", "sort")}
    for d, path in stats.items():
        compute_statistics(zoo / "models" / d, zoo / "domains" / d / "train.jsonl", kind="gram", out=path, samples=8)
    (ws / "regmean.yaml").write_text(REGMEAN.format(zoo=zoo))
    first = _pipeline(ws, "regmean.yaml")
    assert first["version"] == "1" and not first["merge_cached"]
    recorded = {Path(s.path): s.sha256 for s in _lineage("flows-regmean", "1").statistics}
    assert recorded == {p.resolve(): sha256_file(p) for p in stats.values()}
    tagged = versions(get_settings().tracking_uri, "flows-regmean")[0]
    assert {tagged.tag(f"statistics.{i}.sha256") for i in range(2)} == set(recorded.values())
    assert _pipeline(ws, "regmean.yaml")["status"] == "unchanged"

    # Recalibrated on other records, same path, same recipe bytes: a new merge, a new version.
    compute_statistics(zoo / "models" / "reverse", zoo / "domains" / "reverse" / "train.jsonl", kind="gram",
                       out=stats["reverse"], samples=3)
    second = _pipeline(ws, "regmean.yaml")
    assert second["version"] == "2" and not second["merge_cached"]
    assert second["content_id"] != first["content_id"]
    assert {Path(s.path): s.sha256 for s in _lineage("flows-regmean", "2").statistics}[stats["reverse"].resolve()] \
        == sha256_file(stats["reverse"])

    # v1's statistics changed in place: verify restores them from the store by their sha256.
    store = get_settings().home_dir / "store"
    assert sorted(p.name for p in (store / "statistics").glob("*.dvc")) == sorted(
        f"{sha}.dvc" for sha in {*recorded.values(), sha256_file(stats["reverse"])})
    done = CliRunner().invoke(cli, ["verify", "flows-regmean@1"])
    assert done.exit_code == 0, done.output
    old = recorded[stats["reverse"].resolve()]
    assert f"statistics {stats['reverse'].resolve()}: restored from the store (sha256 {old[:16]})" in done.output
    assert "reproduced bit for bit" in done.output
    assert sha256_file(stats["reverse"]) != old  # the user's file is left as it is
    assert CliRunner().invoke(cli, ["verify", "flows-regmean@2"]).exit_code == 0

    # Without a store to restore from, the changed file is named on one line.
    from registry.errors import VerifyMismatch
    from registry.verify import verify_version

    from flows.governance import Governance

    settings = get_settings()
    with pytest.raises(VerifyMismatch, match=rf"flows-regmean v1: statistics file {stats['reverse'].resolve()}: it now "
                                             rf"hashes to {sha256_file(stats['reverse'])[:16]}, not the recorded "
                                             rf"{old[:16]}; put the recorded file back to verify"):
        verify_version(settings.tracking_uri, "flows-regmean@1", audit_log_path=settings.audit_log_path,
                       public_key=Governance(settings).public_key())


def test_a_failed_gate_stops_the_run_before_registration(ws: Path) -> None:
    (ws / "strict.yaml").write_text("domain_minimums: {default: 0.5}\nretention_minimums: {default: null}\n")
    state = merge_pipeline(str(ws / "pass.yaml"), policy_path=str(ws / "strict.yaml"), suite=SUITE,
                           requested_by="alice", return_state=True)
    assert state.is_failed()
    assert "StepRefused: gate:" in state.message and "< minimum 0.5" in state.message
    assert [v.version for v in versions(get_settings().tracking_uri, "flows-pass")] == ["1"]


def test_a_refused_recipe_registers_nothing_and_the_run_says_why(ws: Path) -> None:
    merges = get_settings().cache_dir / "merges"
    merged_before = sorted(p.name for p in merges.iterdir())
    state = _pipeline(ws, "nc.yaml", return_state=True)
    assert state.is_failed()
    assert "cc-by-nc-4.0" in state.message and "commercial" in state.message
    assert versions(get_settings().tracking_uri, "flows-nc") == []
    assert sorted(p.name for p in merges.iterdir()) == merged_before  # refused before merging


def test_the_cli_maps_a_refusal_to_exit_1_and_bad_input_to_exit_2(ws: Path) -> None:
    from click.testing import CliRunner

    from flows.cli import cli

    refused = CliRunner().invoke(cli, ["run", str(ws / "nc.yaml"), "--policy", str(ws / "policy.yaml")])
    assert refused.exit_code == 1
    assert refused.stderr.startswith("error: audit failed") and "cc-by-nc-4.0" in refused.stderr
    (ws / "bad.yaml").write_text("merge_method: lineer\nmodels: []\n")
    bad = CliRunner().invoke(cli, ["run", str(ws / "bad.yaml")])
    assert bad.exit_code == 2 and "lineer" in bad.stderr
    assert versions(get_settings().tracking_uri, "flows-nc") == []


def test_watch_with_nothing_changed_runs_nothing(ws: Path) -> None:
    outcomes = _watch(ws)
    assert [o["status"] for o in outcomes] == ["unchanged"]
    assert len(versions(get_settings().tracking_uri, "flows-pass")) == 1
    assert _audit_events("remerge_triggered") == []


def test_a_changed_parent_gives_exactly_one_new_candidate_even_with_two_watches(ws: Path) -> None:
    sort = ws / "zoo" / "models" / "sort"
    before = content_id(sort)
    weights = sort / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + torch.full_like(tensors[name], 1e-4)  # a new revision of the parent
    save_file(tensors, weights, metadata={"format": "pt"})
    assert content_id(sort) != before

    results: list[list[dict]] = []
    def one_watch() -> None:
        results.append(_watch(ws))
    threads = [threading.Thread(target=one_watch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    statuses = sorted(r[0]["status"] for r in results)
    assert statuses == ["awaiting_approval", "unchanged"]
    found = versions(get_settings().tracking_uri, "flows-pass")
    assert [v.version for v in found] == ["1", "2"]
    assert content_id(sort) in (found[1].tag("parents") or "")
    assert found[0].aliases == () and "candidate" in found[1].aliases  # nothing promoted
    triggered = _audit_events("remerge_triggered")
    assert len(triggered) == 1 and triggered[0]["data"]["changed"] == ["sort"]
    # and a third pass, later, finds nothing to do
    assert _watch(ws)[0]["status"] == "unchanged"


def _paused_run_id(timeout_s: float = 120) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    paused = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=["PAUSED"])))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=paused)
            if runs:
                return str(runs[0].id)
            time.sleep(0.5)
    raise AssertionError("the pipeline never paused for approval")


def _resume(**decision: str) -> None:
    from flows.approval import resume_with_decision

    for _ in range(20):  # the input form's schema is saved just after the run pauses
        try:
            return resume_with_decision(_paused_run_id(), **decision)
        except RuntimeError:
            time.sleep(0.5)
    raise AssertionError("could not resume the paused run")


def test_with_a_server_the_run_pauses_for_a_typed_approval_and_keeps_four_eyes(ws: Path, monkeypatch) -> None:
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # as a deployed server would set it
    results: list[dict] = []
    worker = threading.Thread(target=lambda: results.append(_pipeline(ws, "pause.yaml")))
    worker.start()
    _resume(reviewer="alice", decision="approve")  # the requester: refused, the run pauses again
    _resume(reviewer="bob", decision="approve", comment="looks right")
    worker.join(timeout=300)

    assert results and results[0]["status"] == "approved"
    info = versions(get_settings().tracking_uri, "flows-pause")[-1]
    assert info.tag("approval") == "approved" and info.tag("decided_by") == "bob"
    assert [e["actor"] for e in _audit_events("approved")] == ["bob"]


def test_a_decision_made_on_the_cli_while_paused_is_what_the_run_reports(ws: Path, monkeypatch) -> None:
    from prefect.settings import PREFECT_API_URL

    from registry.approvals import approve

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    results: list[dict] = []
    worker = threading.Thread(target=lambda: results.append(_pipeline(ws, "pause-cli.yaml")))
    worker.start()
    _paused_run_id()  # wait until the run pauses
    settings = get_settings()
    approve(settings.tracking_uri, "flows-pause-cli", 1, reviewer="carol", comment="via the CLI",
            audit_log_path=settings.audit_log_path)
    _resume(reviewer="bob", decision="reject", comment="too late")  # the registry already holds carol's
    worker.join(timeout=300)

    assert results and results[0]["status"] == "approved"
    assert versions(settings.tracking_uri, "flows-pause-cli")[0].tag("decided_by") == "carol"
