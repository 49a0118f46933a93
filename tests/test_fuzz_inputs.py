"""Fuzz the readers of gate policies, suites and shard indexes: whatever the file, each returns its
result or raises a mergeops error on one line; never another exception, never a hang, never a
parse that costs more than a bounded amount of memory.

Bounded by default (200 examples per test, like the other fuzzers); ``MERGEOPS_FUZZ_EXAMPLES`` raises
the count for a long run, e.g. ``MERGEOPS_FUZZ_EXAMPLES=100000 pytest tests/test_fuzz_inputs.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from audit_helpers import make_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evaluation.gates import GatePolicy, decide, load_gate_policy
from evaluation.provenance import policy_settings
from evaluation.suites import MaterializedSuite, prepare_suite
from merge.errors import MergeopsError
from merge.layout import INDEX_NAME, ModelLayout, read_layout

EXAMPLES = int(os.environ.get("MERGEOPS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SECONDS, PEAK = 20, 64 << 20  # per example: a hang or a parse this costly is a bug


@contextmanager
def _bounded():
    """Fail the example past SECONDS of wall time or PEAK bytes of Python allocations."""
    def ring(signum, frame):
        raise AssertionError(f"no answer within {SECONDS} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(SECONDS)
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
        assert peak < PEAK, f"peak {peak:,} bytes of Python memory"
    finally:
        tracemalloc.stop()
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _returns_or_refuses(call, kind):
    with _bounded():
        try:
            result = call()
        except MergeopsError as exc:
            assert exc.exit_code in (1, 2) and "\n" not in str(exc).strip(), str(exc)
            return None
    assert isinstance(result, kind)
    return result


_scalars = (st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=10)
            | st.sampled_from(["default", "all", ".nan", "1e999", "-1", "0.5", "acc", "exact_match"]))


def _values(keys: list[str]):
    return st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), inner, max_size=4),
                        max_leaves=20)


# A YAML alias bomb and deep nesting, as text: the bounded loader must refuse both.
_BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh"))
_HOSTILE_TEXTS = st.sampled_from([_BOMB, "[" * 10_000 + "]" * 10_000, "x: " + "9" * 5000, "\ufeff---\n- ",
                                  "!!python/object/apply:os.system [true]", "a: *nothing"])


# -- gate policies ------------------------------------------------------------------------------
_POLICY_KEYS = list(GatePolicy.model_fields) + ["default", "reverse", "canaries", "contamination_max",
                                                 "canary_exposure_max", "pii_max", "seed", "prefix", "secret"]
_pvalues = _values(_POLICY_KEYS)
_thresholds = st.dictionaries(st.sampled_from(["default", "reverse", "sort"]) | st.text(max_size=4),
                              st.none() | st.floats() | _pvalues, max_size=3)
_leakage = st.fixed_dictionaries({}, optional={
    "canary_candidates": _pvalues, "canary_exposure_max": st.floats() | _pvalues, "contamination_max": st.floats(),
    "contamination_ngram": st.integers(-5, 10**6) | _pvalues, "pii_max": _pvalues, "pii_prompts": _pvalues,
    "canaries": st.lists(st.fixed_dictionaries({"prefix": _pvalues, "secret": _pvalues, "charset": _pvalues}),
                         max_size=2) | _pvalues,
    "require_contamination_check": _pvalues, "junk": _pvalues})
_policies = st.fixed_dictionaries({}, optional={
    "version": _pvalues, "domain_minimums": _thresholds | _pvalues, "retention_minimums": _thresholds,
    "champion_tolerance": st.floats() | _pvalues, "leakage": _leakage | _pvalues, "require_audit_pass": _pvalues,
    "require_license_pass": _pvalues, "unknown": _pvalues})


def _check_policy(tmp: Path, data: bytes) -> None:
    path = tmp / "policy.yaml"
    path.write_bytes(data)
    policy = _returns_or_refuses(lambda: load_gate_policy(path), GatePolicy)
    if policy is None:
        return
    _returns_or_refuses(lambda: policy_settings(path), object)  # what a pipeline records of it
    with _bounded():  # the parsed policy decides plain evidence without raising
        gates = decide(policy, candidate="merged", scores={"reverse": 0.5, "sort": 0.1},
                       retention={"reverse": 0.7, "sort": None}, audit_verdict="pass", license_verdict=None,
                       champion_scores={"reverse": 0.6})
    assert all(isinstance(g.passed, bool) for g in gates)


@FUZZ
@given(doc=_policies | _pvalues)
def test_policy_documents_parse_or_refuse(doc) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_policy(Path(tmp), yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass"))


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))
       | _HOSTILE_TEXTS.map(str.encode))
def test_policy_bytes_parse_or_refuse(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_policy(Path(tmp), data)


# -- suites -------------------------------------------------------------------------------------
_SUITE_KEYS = ["name", "domains", "tasks", "zoo_domains", "max_gen_toks", "loglikelihood", "metric", "task",
               "config", "data", "prompt", "target", "n", "domain", "description"]
_svalues = _values(_SUITE_KEYS)
_data = st.sampled_from(["rows.jsonl", "rows.csv", "missing.jsonl", "../rows.jsonl", "/dev/zero", "", "rows",
                         "fifo.jsonl", "rows.parquet"]) | st.text(max_size=8)
_columns = st.sampled_from(["prompt", "target", "question", "answer", "q a", "{{x}}", ""]) | st.text(max_size=5)
_task = st.fixed_dictionaries({}, optional={
    "data": _data, "prompt": _columns, "target": _columns, "name": st.text(max_size=6) | _svalues,
    "task": st.sampled_from(["arc_easy", "nope"]) | _svalues, "metric": st.sampled_from(["acc", "exact_match"]),
    "config": st.fixed_dictionaries({"task": st.text(max_size=6) | _svalues}, optional={"dataset_path": _svalues,
                                    "dataset_kwargs": _svalues, "metric_list": _svalues}) | _svalues,
    "max_gen_toks": st.integers(-2, 10**20) | _svalues, "n": st.integers(-2, 10**20) | _svalues,
    "junk": _svalues})
_domain = st.fixed_dictionaries({"tasks": st.lists(_task, max_size=3) | _svalues},
                                optional={"metric": st.sampled_from(["acc", "exact_match"]) | _svalues})
_suites = st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=8) | _svalues,
    "domains": st.dictionaries(st.sampled_from(["capitals", "a.b", "../x", "a b", ""]) | st.text(max_size=5),
                               _domain | _svalues, max_size=3) | _svalues,
    "tasks": st.lists(st.builds(lambda t, d: {**t, "domain": d}, _task, st.text(max_size=5)), max_size=2),
    "zoo_domains": st.sampled_from(["all", [], ["sort"]]) | _svalues, "max_gen_toks": _svalues,
    "loglikelihood": _svalues, "junk": _svalues})


def _check_suite(tmp: Path, data: bytes) -> None:
    (tmp / "rows.jsonl").write_text('{"prompt": "a", "target": "b", "question": "q", "answer": "x"}\n')
    (tmp / "rows.csv").write_text("prompt,target\na,b\n")
    if not (tmp / "fifo.jsonl").exists():
        os.mkfifo(tmp / "fifo.jsonl")
    path = tmp / "suite.yaml"
    path.write_bytes(data)
    _returns_or_refuses(lambda: prepare_suite(path, cache_dir=tmp / "cache"), MaterializedSuite)


@FUZZ
@given(doc=_suites | _svalues)
def test_suite_documents_materialise_or_refuse(doc) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_suite(Path(tmp), yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass"))


@FUZZ
@given(data=st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass"))
       | _HOSTILE_TEXTS.map(str.encode))
def test_suite_bytes_materialise_or_refuse(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_suite(Path(tmp), data)


# -- shard indexes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_shards(tmp_path_factory) -> Path:
    """A tiny model split into two shards: model-00001-of-00002.safetensors holds the embedding,
    model-00002-of-00002.safetensors the rest (the index is the fuzzed part)."""
    from safetensors.torch import load_file, save_file

    model = make_model(tmp_path_factory.mktemp("index") / "model")
    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    first = {k: v for k, v in tensors.items() if "embed" in k}
    save_file(first, str(model / "model-00001-of-00002.safetensors"))
    save_file({k: v for k, v in tensors.items() if k not in first}, str(model / "model-00002-of-00002.safetensors"))
    return model


_SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
_TENSORS = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.norm.weight"]
_shard_names = st.sampled_from(_SHARDS + ["../model-00001-of-00002.safetensors", "/etc/passwd", "", ".",
                                          "README.md", "config.json", "missing.safetensors", "a\0b", "C:\\x"])
_ivalues = _values(["weight_map", "metadata", "total_size"] + _TENSORS)
_indexes = st.fixed_dictionaries({"weight_map": st.dictionaries(st.sampled_from(_TENSORS) | st.text(max_size=6),
                                                                _shard_names | _ivalues, max_size=5) | _ivalues},
                                 optional={"metadata": _ivalues, "junk": _ivalues})


def _check_index(model: Path, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model"
        shutil.copytree(model, copy)
        (copy / INDEX_NAME).write_bytes(data)
        _returns_or_refuses(lambda: read_layout(copy), ModelLayout)


def _exact_index(mapping: dict[str, str]) -> dict:
    return {"metadata": {"total_size": 1}, "weight_map": mapping}


@FUZZ
@given(doc=_indexes | _ivalues)
def test_shard_indexes_read_or_refuse(two_shards: Path, doc) -> None:
    _check_index(two_shards, json.dumps(doc).encode())


@FUZZ
@given(data=st.binary(max_size=200) | _HOSTILE_TEXTS.map(str.encode)
       | st.permutations(_TENSORS).map(lambda names: json.dumps(_exact_index(
           {n: _SHARDS[0] if "embed" in n else _SHARDS[1] for n in names[:2]})).encode()))
def test_shard_index_bytes_read_or_refuse(two_shards: Path, data: bytes) -> None:
    _check_index(two_shards, data)


def test_the_true_index_reads_and_the_audit_reads_the_same(two_shards: Path, tmp_path: Path) -> None:
    """The fuzzers' model is sound: its true index reads, in merge/ and in the registry's audit."""
    from registry.audit import audit_models

    model = tmp_path / "model"
    shutil.copytree(two_shards, model)
    (model / INDEX_NAME).write_text(json.dumps(_exact_index(
        {n: _SHARDS[0] if "embed" in n else _SHARDS[1] for n in _TENSORS})))
    assert sorted(read_layout(model).tensors) == sorted(_TENSORS)
    assert audit_models([str(model)]).verdict == "pass"
    (model / INDEX_NAME).write_text(json.dumps(_exact_index({n: _SHARDS[1] for n in _TENSORS})))
    with pytest.raises(MergeopsError, match="mapped to"):
        read_layout(model)
    assert [f.check for f in audit_models([str(model)]).errors()] == ["format.header"]  # the index is malformed
