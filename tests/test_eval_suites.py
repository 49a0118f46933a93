"""Suites: shipped and user-defined, materialised as lm-eval task YAML; parsing lm-eval's output."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from evaluation.errors import SuiteError
from evaluation.lmeval_runner import parse_results
from evaluation.suites import MaterializedSuite, TaskSpec, load_suite, materialize, suite_names


def test_shipped_zoo_suite_covers_every_zoo_domain_with_absolute_offline_paths(tiny_zoo, tmp_path):
    assert {"zoo", "zoo-full"} <= set(suite_names())
    suite = materialize(load_suite("zoo")[0], zoo_dir=tiny_zoo, cache_dir=tmp_path)
    assert suite.domains == ["reverse", "shift", "sort", "swap"]
    assert all(t.n == 16 and t.primary == "exact_match" for t in suite.tasks)
    config = yaml.safe_load((suite.include_dir / "zoo_sort.yaml").read_text())
    data = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert config["dataset_path"] == "json" and data.is_absolute() and data.is_file()
    assert config["generation_kwargs"] == {"until": ["\n"], "do_sample": False, "max_gen_toks": 16}
    full = materialize(load_suite("zoo-full")[0], zoo_dir=tiny_zoo, cache_dir=tmp_path)
    assert len(full.tasks) == 8 and full.suite_hash != suite.suite_hash
    assert full.primary()["sort"] == ("zoo_sort", "exact_match")


def test_suite_errors_are_usage_errors(tiny_zoo, tmp_path):
    with pytest.raises(SuiteError, match="unknown suite 'nope'"):
        load_suite("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntasks: [{domain: d, metric: acc}]\n")
    with pytest.raises(SuiteError, match="exactly one of `task`"):
        load_suite(bad)
    missing = tmp_path / "missing.yaml"
    missing.write_text("name: x\nzoo_domains: [reverse, cooking]\n")
    with pytest.raises(SuiteError, match="'cooking' is not in"):
        materialize(load_suite(missing)[0], zoo_dir=tiny_zoo, cache_dir=tmp_path)
    with pytest.raises(SuiteError, match="--zoo"):
        materialize(load_suite("zoo")[0], zoo_dir=None, cache_dir=tmp_path)


SUITE = MaterializedSuite(name="t", suite_hash="0" * 64, include_dir=Path("/x"), max_gen_toks=16, tasks=(
    TaskSpec(name="a", domain="a", metrics=("exact_match",), primary="exact_match", n=4),
    TaskSpec(name="b", domain="b", metrics=("exact_match,strict",), primary="exact_match,strict", n=None,
             builtin=True)))


def _out(b_results):
    return {"results": {"a": {"exact_match,strip": 0.5, "exact_match_stderr,strip": "N/A", "alias": "a"},
                        "b": b_results},
            "n-samples": {"a": {"original": 4, "effective": 4}, "b": {"original": 10, "effective": 3}},
            "samples": {"a": [{"filter": "strip", "exact_match": v} for v in (1.0, 0.0, 1.0, 0.0)], "b": []}}


def test_parse_results_rows_stderr_and_counts():
    rows = parse_results(_out({"exact_match,strict": 0.25, "exact_match,loose": 0.5,
                               "exact_match_stderr,strict": 0.1}), SUITE)
    a, b = rows
    assert (a["metric"], a["value"], a["n"], a["n_expected"]) == ("exact_match", 0.5, 4, 4)
    assert a["stderr"] == pytest.approx(math.sqrt(1 / 3 / 4))  # closed form, sample std / sqrt(n)
    assert (b["metric"], b["value"], b["stderr"]) == ("exact_match,strict", 0.25, 0.1)
    assert (b["n"], b["n_expected"]) == (3, 10)  # a limit shows up as n < n_expected


def test_parse_results_names_a_missing_metric():
    with pytest.raises(SuiteError, match="reports no exact_match,strict"):
        parse_results(_out({"acc,none": 1.0}), SUITE)
