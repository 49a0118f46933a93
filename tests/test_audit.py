"""The source-model audit on crafted inputs: one bad input per check."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest
import torch
from audit_helpers import base_tensors, finetune, make_model, pickle_bomb, raw_safetensors

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from merge.errors import UsageError
from merge.manifest import content_id
from registry.audit import audit_models
from registry.schemas import FINDINGS_SCHEMA


def checks(report, parent=None, severity=None):
    return {f.check for f in report.findings
            if (parent is None or f.parent == parent) and (severity is None or f.severity == severity)}


@pytest.fixture
def family(tmp_path):
    """A base and two small fine-tunes declaring it: a clean, mergeable set."""
    base = base_tensors()
    make_model(tmp_path / "base", base)
    make_model(tmp_path / "a", finetune(base, 1), license="mit", base_model="base")
    make_model(tmp_path / "b", finetune(base, 2), license="bsd-3-clause", base_model="base")
    return tmp_path, base


def test_clean_family_passes_with_provenance(family):
    root, _ = family
    report = audit_models(["base", "a", "b"], base_dir=root)
    assert report.verdict == "pass", report.findings
    assert report.base == "base" and [p.is_base for p in report.parents] == [True, False, False]
    assert report.pins() == {ref: content_id(root / ref) for ref in ("base", "a", "b")}
    a = report.parents[1]
    assert a.revision == a.content_id and a.revision_kind == "content-id"
    assert a.delta_from_base is not None and 0 < a.relative_delta < 0.1
    assert {"mergeops", "safetensors", "torch"} <= set(report.tools)
    assert report.audited_at.endswith("+00:00")
    assert len(FINDINGS_SCHEMA.validate(report.findings_table())) == len(report.findings)


def test_truncated_file_is_refused(tmp_path):
    model = make_model(tmp_path / "m")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    report = audit_models([model])
    assert report.verdict == "fail"
    [finding] = [f for f in report.findings if f.check == "format.header"]
    assert "truncated" in finding.message and "model.safetensors" in finding.message


def test_header_claiming_2_pow_60_bytes_is_refused_without_allocating(tmp_path):
    model = make_model(tmp_path / "m")
    raw_safetensors(model / "model.safetensors", {}, b"", claimed_length=2**60)
    report = audit_models([model])
    assert any(f.check == "format.header" and "exceeds" in f.message for f in report.findings)
    assert report.parents[0].verdict == "fail"


def test_a_checkpoint_without_tensors_is_refused(tmp_path):
    model = make_model(tmp_path / "m")
    raw_safetensors(model / "model.safetensors", {"__metadata__": {"format": "pt"}}, b"")
    assert [f.check for f in audit_models([model]).errors()] == ["format.layout"]


def test_overlapping_offsets_are_refused(tmp_path):
    model = make_model(tmp_path / "m")
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    raw_safetensors(model / "model.safetensors", header, bytes(24))
    report = audit_models([model])
    assert any(f.check == "format.header" and "overlaps" in f.message for f in report.findings)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.binary(max_size=64), claimed=st.integers(0, 2**64 - 1), tail=st.binary(max_size=32))
def test_arbitrary_header_bytes_are_findings_never_crashes(tmp_path, header, claimed, tail):
    model = tmp_path / "fuzz"
    if not model.exists():
        make_model(model)
    (model / "model.safetensors").write_bytes(claimed.to_bytes(8, "little") + header + tail)
    report = audit_models([model])
    assert report.verdict == "fail"  # random bytes never make a valid checkpoint
    assert {f.check for f in report.errors()} <= {"format.header", "format.layout"}


def test_sharded_model_is_read_shard_by_shard(family):
    root, base = family
    model = make_model(root / "sharded", finetune(base, 7), base_model="base")
    tensors = finetune(base, 7)
    (model / "model.safetensors").unlink()
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[:1]}, str(model / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[1:]}, str(model / "model-00002-of-00002.safetensors"))
    weight_map = {n: f"model-0000{1 if i == 0 else 2}-of-00002.safetensors" for i, n in enumerate(names)}
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    report = audit_models(["base", "a", "sharded"], base_dir=root)
    assert report.verdict == "pass", report.errors()
    assert report.parents[2].n_tensors == 3 and report.parents[2].delta_from_base > 0
    assert report.parents[2].architecture_fingerprint == report.parents[0].architecture_fingerprint


def test_stray_shard_outside_the_index_is_still_validated(tmp_path):
    model = make_model(tmp_path / "m")
    raw_safetensors(model / "extra.safetensors", {"x": {"dtype": "XX", "shape": [1], "data_offsets": [0, 1]}}, b"\0")
    report = audit_models([model])
    assert any(f.check == "format.header" and "extra.safetensors" in f.message for f in report.findings)


def test_pickle_files_are_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "UNPICKLED"
    # The payload is real: deserialising it elsewhere does create its marker.
    proof = tmp_path / "proof"
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
                   input=pickle_bomb(proof), check=True)
    assert proof.exists()

    model = make_model(tmp_path / "m")
    (model / "pytorch_model.bin").write_bytes(pickle_bomb(marker))
    (model / "weights.dat").write_bytes(pickle_bomb(marker))  # a pickle under an innocent name
    with zipfile.ZipFile(model / "checkpoint", "w") as zf:  # torch's zip layout, no suffix
        zf.writestr("archive/data.pkl", pickle_bomb(marker))
    (model / "original").mkdir()  # as in Hub repos that ship the original checkpoint too
    (model / "original" / "consolidated.00.pth").write_bytes(pickle_bomb(marker))
    only = make_model(tmp_path / "only-pickle")
    (only / "model.safetensors").unlink()
    (only / "model.ckpt").write_bytes(pickle_bomb(marker))

    report = audit_models([model, only])
    assert not marker.exists()
    refused = sorted(f.message.split()[0] for f in report.findings if f.check == "format.pickle")
    assert refused == ["checkpoint", "model.ckpt", "original/consolidated.00.pth", "pytorch_model.bin", "weights.dat"]
    assert all("safetensors" in f.message for f in report.findings if f.check == "format.pickle")
    assert [p.verdict for p in report.parents] == ["fail", "fail"]


def test_custom_model_code_is_flagged(tmp_path):
    model = make_model(tmp_path / "m")
    (model / "modeling_evil.py").write_text("import os\nos.system('touch /tmp/pwned')\n")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"auto_map": {"AutoModel": "modeling_evil.Evil"}}))
    report = audit_models([model])
    [finding] = report.findings
    assert (finding.check, finding.severity) == ("format.remote-code", "warning")
    assert "modeling_evil.py" in finding.message and "auto_map" in finding.message


def test_nan_tensor_is_refused(family):
    root, base = family
    bad = finetune(base, 3)
    bad["model.layers.0.mlp.up_proj.weight"][0, 0] = float("nan")
    make_model(root / "nan", bad, base_model="base")
    report = audit_models(["base", "a", "nan"], base_dir=root)
    [finding] = [f for f in report.findings if f.check == "weights.nonfinite"]
    assert finding.parent == "nan" and finding.severity == "error"
    assert "model.layers.0.mlp.up_proj.weight" in finding.message


def test_large_tensors_are_streamed_in_row_blocks(family, monkeypatch):
    root, base = family
    bad = finetune(base, 3)
    bad["model.layers.0.mlp.up_proj.weight"][-1, -1] = float("inf")  # in the last block
    make_model(root / "inf", bad, base_model="base")
    whole = audit_models(["base", "a", "inf"], base_dir=root)
    monkeypatch.setattr("registry.audit_weights._BLOCK_ELEMENTS", 7)  # 16x8 -> blocks of one row
    blocks = audit_models(["base", "a", "inf"], base_dir=root)
    assert [f.parent for f in blocks.findings if f.check == "weights.nonfinite"] == ["inf"]
    assert blocks.parents[1].delta_from_base == pytest.approx(whole.parents[1].delta_from_base, rel=1e-9)


def test_explicit_base_is_audited_and_used(family):
    root, _ = family
    report = audit_models(["a", "b"], base_dir=root, base="base")
    assert [p.path for p in report.parents] == ["a", "b", "base"] and report.base == "base"
    assert report.parents[2].is_base and report.parents[0].delta_from_base is not None
    same = audit_models(["base", "a"], base_dir=root, base=root / "base")
    assert [p.path for p in same.parents] == ["base", "a"] and same.base == "base"


def test_zero_matrix_and_unexpected_dtype(tmp_path):
    tensors = base_tensors()
    tensors["model.layers.0.mlp.up_proj.weight"] = torch.zeros(16, 8)
    tensors["model.norm.weight"] = torch.zeros(8, dtype=torch.float64)
    report = audit_models([make_model(tmp_path / "m", tensors)])
    by_check = {(f.check, f.severity) for f in report.findings}
    assert ("weights.zero", "error") in by_check  # the matrix
    assert ("weights.zero", "info") in by_check  # the vector: an untrained bias is normal
    assert ("weights.dtype", "warning") in by_check


def test_parent_far_from_the_base_is_refused(family):
    root, base = family
    make_model(root / "far", finetune(base, 4, scale=100.0), base_model="base")
    report = audit_models(["base", "a", "b", "far"], base_dir=root)
    [finding] = [f for f in report.findings if f.check == "weights.delta"]
    assert finding.parent == "far" and finding.severity == "error"
    assert report.parents[3].verdict == "fail" and report.parents[1].verdict == "pass"


def test_different_shapes_are_refused_naming_the_parent(family):
    root, _ = family
    make_model(root / "wide", base_tensors(hidden=12), base_model="base")
    report = audit_models(["base", "a", "wide"], base_dir=root)
    [finding] = [f for f in report.findings if f.check == "compat.architecture"]
    assert finding.parent == "wide" and finding.severity == "error"
    assert "model.embed_tokens.weight" in finding.message and "[8, 12]" in finding.message


def test_different_tokenizer_is_refused_naming_the_parent(family):
    root, base = family
    reversed_vocab = {c: i for i, c in enumerate("hgfedcba")}
    make_model(root / "tok", finetune(base, 5), base_model="base", vocab=reversed_vocab)
    report = audit_models(["base", "a", "tok"], base_dir=root)
    assert checks(report, severity="error") == {"compat.tokenizer"}
    assert [f.parent for f in report.findings if f.check == "compat.tokenizer"] == ["tok"]


def test_parents_of_different_bases_get_an_ancestry_finding(family, tmp_path):
    root, base = family
    make_model(root / "stranger", finetune(base, 6), base_model="someone/other-base")
    report = audit_models(["a", "b", "stranger"], base_dir=root)
    [finding] = [f for f in report.findings if f.check == "compat.ancestry"]
    assert finding.parent == "stranger" and finding.severity == "warning" and "other-base" in finding.message
    strict = tmp_path / "strict.yaml"
    from registry.licenses import DEFAULT_POLICY_PATH

    strict.write_text(DEFAULT_POLICY_PATH.read_text().replace("different_base: warning", "different_base: error"))
    assert audit_models(["a", "b", "stranger"], base_dir=root, policy=strict).verdict == "fail"


def test_pin_mismatch_is_refused(family):
    root, _ = family
    good = content_id(root / "a")
    assert audit_models(["base", "a"], base_dir=root, pins={"a": good}).verdict == "pass"
    report = audit_models(["base", "a"], base_dir=root, pins={"a": "0" * 64})
    [finding] = [f for f in report.findings if f.check == "integrity.pin"]
    assert finding.parent == "a" and finding.severity == "error" and good[:12] in finding.message
    with pytest.raises(UsageError, match="64-hex"):
        audit_models(["a"], base_dir=root, pins={"a": "latest"})
    with pytest.raises(UsageError, match="names no audited"):
        audit_models(["a"], base_dir=root, pins={"b": good})


def test_tampered_manifest_is_refused(family):
    root, _ = family
    entries = [{"path": "model.safetensors", "sha256": "0" * 64, "size": 1}]
    (root / "a" / "mergeops.manifest.json").write_text(json.dumps({"content_id": "x", "files": entries}))
    report = audit_models(["a"], base_dir=root)
    assert "integrity.manifest" in checks(report, "a", "error")


def test_git_revision_is_read_from_the_dot_git_files(family):
    root, _ = family
    sha = "1234567890abcdef1234567890abcdef12345678"
    git = root / "a" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text(sha + "\n")
    parent = audit_models(["a"], base_dir=root).parents[0]
    assert (parent.revision, parent.revision_kind) == (sha, "git")
    assert audit_models(["a"], base_dir=root, pins={"a": sha}).verdict == "pass"


def test_bad_input_raises_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        audit_models([tmp_path / "missing"])
    with pytest.raises(UsageError, match="intended_use"):
        audit_models([make_model(tmp_path / "m")], intended_use="military")
    with pytest.raises(UsageError):
        audit_models([])


def test_report_json_round_trips(family):
    root, _ = family
    report = audit_models(["base", "a"], base_dir=root)
    doc = json.loads(report.to_json())
    assert type(report).model_validate(doc) == report
