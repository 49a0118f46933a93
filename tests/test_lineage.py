"""The lineage record: built from plain reports, byte-exact round trip, tree and model card.

``write_model`` and ``make_lineage`` are reused by the registry tests (tiny real safetensors dirs
with a mergeops manifest; no merge engine needed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from merge.manifest import MANIFEST_NAME, canonical_json, content_id, file_entries
from registry.errors import LineageError
from registry.lineage import LineageRecord, build_lineage
from registry.lineage_tree import render_tree
from registry.model_card import render_model_card

RECIPE = """merge_method: linear
name: tiny-merge
seed: 7
models:
  - model: p1
    parameters: {weight: 0.5}
  - model: p2
    parameters: {weight: 0.5}
dtype: float32
"""


def write_model(path: Path, seed: int, *, parents: list[Path] = (), recipe_sha: str = "") -> Path:
    """A small real HF-style dir; with ``parents`` it also gets a merge manifest."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    save_file({"w": rng.standard_normal((4, 3)).astype(np.float32)}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"hidden_size": 3, "model_type": "llama"}))
    if parents:
        entries = file_entries(path)
        manifest = {"content_id": content_id(path), "files": [e.model_dump() for e in entries],
                    "recipe_sha256": recipe_sha,
                    "parents": [{"path": str(p.resolve()), "content_id": content_id(p)} for p in parents]}
        (path / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return path


def make_lineage(tmp: Path, *, gates_pass: bool = True, requested_by: str = "alice",
                 merged_seed: int = 3) -> tuple[LineageRecord, Path]:
    """Two parents, a 'merged' dir, an audit and an evaluation report as the pipeline hands them over."""
    p1, p2 = write_model(tmp / "p1", 1), write_model(tmp / "p2", 2)
    sha = hashlib.sha256(RECIPE.encode()).hexdigest()
    merged = write_model(tmp / "merged", merged_seed, parents=[p1, p2], recipe_sha=sha)
    manifest = json.loads((merged / MANIFEST_NAME).read_text())
    audit = {"verdict": "pass", "effective_license": "apache-2.0", "obligations": ["keep the NOTICE file"],
             "parents": [{"path": str(p), "content_id": content_id(p), "license": "apache-2.0",
                          "verdict": "pass"} for p in (p1, p2)], "findings": []}
    evaluation = {
        "results": [{"content_id": manifest["content_id"], "model": "merged", "role": "merged", "domain": d,
                     "task": d, "metric": "exact_match", "value": v, "stderr": 0.01, "n": 20}
                    for d, v in (("sort", 0.9), ("reverse", 0.75))]
        + [{"content_id": content_id(p1), "model": "p1", "role": "parent", "domain": "sort", "task": "sort",
            "metric": "exact_match", "value": 0.95, "stderr": 0.01, "n": 20}],
        "retention": {"sort": 0.947, "reverse": 0.9},
        "leakage": [{"check": "canary_exposure", "model": "merged", "value": 0.0, "threshold": 0.05,
                     "verdict": "pass"}],
        "gates": [{"gate": "min_retention", "observed": 0.9 if gates_pass else 0.4, "threshold": 0.8,
                   "passed": gates_pass, "reason": "" if gates_pass else "reverse retention 0.4 < 0.8"}],
        "digest": "d" * 64,
    }
    record = build_lineage(
        name="tiny-merge", recipe_text=RECIPE, recipe_sha256=sha, recipe_base_dir=tmp, merge_manifest=manifest,
        audit_report=audit, evaluation_report=evaluation, requested_by=requested_by,
        references={str(p1.resolve()): "p1", str(p2.resolve()): "p2"}, dvc_revision="abc123",
        dvc_md5s={"data/zoo": "0" * 32},
    )
    return record, merged


def test_build_fills_every_section(tmp_path):
    record, merged = make_lineage(tmp_path)
    assert [p.reference for p in record.parents] == ["p1", "p2"]
    assert record.parents[0].content_id == content_id(tmp_path / "p1")
    assert {p.license for p in record.parents} == {"apache-2.0"}
    assert record.recipe.method == "linear" and record.seed == 7
    assert record.evaluation.scores == {"sort": 0.9, "reverse": 0.75}  # the merged model's rows only
    assert record.merged.content_id == content_id(merged)
    assert record.code.packages["safetensors"]
    assert (record.gate_verdict, record.leakage_verdict) == ("pass", "pass")
    assert make_lineage(tmp_path / "f", gates_pass=False)[0].gate_verdict == "fail"


def test_round_trip_is_byte_exact(tmp_path):
    record, _ = make_lineage(tmp_path)
    data = record.to_json_bytes()
    assert data == canonical_json(json.loads(data))
    again = LineageRecord.from_json_bytes(data)
    assert again == record
    assert again.to_json_bytes() == data


def test_unknown_schema_version_is_refused(tmp_path):
    raw = json.loads(make_lineage(tmp_path)[0].to_json_bytes())
    raw["schema_version"] = 99
    with pytest.raises(LineageError, match="schema_version 99"):
        LineageRecord.from_json_bytes(json.dumps(raw))


def test_tree_shows_parents_flowing_into_the_merge(tmp_path):
    record, _ = make_lineage(tmp_path)
    tree = render_tree(record, title="tiny-merge v1", aliases=("candidate",), approval="pending")
    lines = tree.splitlines()
    assert lines[0] == "parents"
    assert lines[1].startswith("├── p1  content " + record.parents[0].content_id[:16])
    assert "licence apache-2.0  audit pass" in lines[1]
    assert any(ln.startswith("tiny-merge v1  [candidate]  content " + record.merged.content_id[:16])
               for ln in lines)
    for needle in ("linear · recipe", "│ merge_method: linear", "sort  0.900  retention 0.947",
                   "min_retention  observed 0.900  threshold 0.800  pass", "approvals  pending  (requested by alice)"):
        assert needle in tree


def test_model_card_front_matter(tmp_path):
    record, _ = make_lineage(tmp_path)
    card = render_model_card(record, name="tiny-merge")
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["base_model"] == ["p1", "p2"]
    assert meta["base_model_relation"] == "merge"
    assert meta["license"] == "apache-2.0"
    assert meta["tags"] == ["merge", "mergeops"]
    results = meta["model-index"][0]["results"]
    assert {(r["dataset"]["name"], r["metrics"][0]["value"]) for r in results} == {("sort", 0.9), ("reverse", 0.75)}
    assert "merge_method: linear" in body and "keep the NOTICE file" in body and "| min_retention |" in body


def test_not_checked_contamination_is_no_leak_but_a_failed_manifest_is(tmp_path):
    from registry.lineage import LeakageResult

    record, _ = make_lineage(tmp_path)
    unchecked = LeakageResult(check="contamination", model="p2", value=None, verdict="not_checked",
                              detail={"reason": "the model card declares no training data"})
    assert record.model_copy(update={"leakage": [*record.leakage, unchecked]}).leakage_verdict == "pass"
    broken = LeakageResult(check="training_data", model="p1", verdict="fail", detail={"path": "data/train.jsonl"})
    assert record.model_copy(update={"leakage": [unchecked, broken]}).leakage_verdict == "fail"
