"""The merge reads exactly the audited parents: each parent's content id is hashed from the bytes
the merge itself reads (merge/parent_reads.py), so a parent edited after its audit or while the
merge runs is refused, naming the parent and the file, and nothing is written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from merge import faults
from merge.errors import PinMismatch
from merge.layout import read_layout
from merge.manifest import content_id
from merge.recipe import parse_recipe
from merge import run as merge_run
from merge.run import run_merge
from merge.synthetic import write_llama


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pair")
    base = write_llama(root / "base", seed=0, layers=4, shard_bytes=60_000)  # several shards
    write_llama(root / "a", seed=1, base=base, layers=4, shard_bytes=60_000)
    return root


def _linear(root: Path, a: Path, pins: dict | None = None):
    doc = {"merge_method": "linear", "models": [{"model": str(root / "base"), "parameters": {"weight": 0.5}},
                                                {"model": str(a), "parameters": {"weight": 0.5}}]}
    if pins:
        doc["pins"] = pins
    return parse_recipe(json.dumps(doc), base_dir=root)


def _flip_weights(model: Path) -> None:
    """Change one byte inside every tensor, in place (same size, same header): whatever the merge
    has not read yet differs from what was audited."""
    layout = read_layout(model)
    for shard, info in layout.tensors.values():
        if info.nbytes:
            offset = layout.shards[shard].data_offset + info.start
            with open(model / shard, "r+b") as fh:
                fh.seek(offset)
                byte = fh.read(1)
                fh.seek(offset)
                fh.write(bytes([byte[0] ^ 0x40]))


def test_parent_ids_hashed_while_streamed_equal_the_audit_hash(pair, tmp_path):
    """Out-of-order and repeated reads (a slice that reads layer 0 twice, after layer 3) still hash
    every parent to the content id a whole-file hash gives."""
    doc = {"merge_method": "passthrough", "slices": [
        {"sources": [{"model": str(pair / "a"), "layer_range": [2, 4]}]},
        {"sources": [{"model": str(pair / "a"), "layer_range": [0, 1]}]},
        {"sources": [{"model": str(pair / "a"), "layer_range": [0, 2]}]}]}
    result = run_merge(parse_recipe(json.dumps(doc), base_dir=pair), tmp_path / "out", progress=False)
    assert [p["content_id"] for p in result.parents] == [content_id(pair / "a")]
    result = run_merge(_linear(pair, pair / "a"), tmp_path / "lin", progress=False)
    assert [p["content_id"] for p in result.parents] == [content_id(pair / "base"), content_id(pair / "a")]


@pytest.mark.parametrize("point", ["merge.parents-open", "merge.tensor-fed"])
def test_a_parent_edited_in_place_during_the_merge_is_refused(pair, tmp_path, point, monkeypatch):
    # One merge thread: the edit runs at the point while no other tensor is being read, so what is
    # still unread is known (with several, the others may read every tensor before the edit lands,
    # and the merge, rightly, sees only audited bytes).
    monkeypatch.setattr(merge_run, "compute_workers", lambda: 1)
    a = tmp_path / "a"
    shutil.copytree(pair / "a", a)
    recipe = _linear(pair, a, pins={str(a): content_id(a)})  # what the audit hashed
    edited = []

    def edit() -> None:
        if not edited:
            _flip_weights(a)
            edited.append(True)

    out = tmp_path / "out"
    with faults.at(point, edit), pytest.raises(PinMismatch) as exc:
        run_merge(recipe, out, progress=False)
    assert str(a) in str(exc.value) and "nothing was written" in str(exc.value)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".out")]


def test_side_files_are_copied_from_the_bytes_that_were_hashed(pair, tmp_path):
    """A config swapped after the parents were opened is not the one copied, nor the one hashed."""
    a = tmp_path / "a"
    shutil.copytree(pair / "a", a)
    original = (pair / "base" / "config.json").read_bytes()
    base = tmp_path / "base"
    shutil.copytree(pair / "base", base)
    doc = {"merge_method": "linear", "models": [{"model": str(base), "parameters": {"weight": 0.5}},
                                                {"model": str(a), "parameters": {"weight": 0.5}}]}

    def swap() -> None:
        (base / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 1, "edited": True}))

    with faults.at("merge.parents-open", swap):
        result = run_merge(parse_recipe(json.dumps(doc), base_dir=tmp_path), tmp_path / "out", progress=False)
    assert "edited" not in json.loads((tmp_path / "out" / "config.json").read_text())
    assert json.loads((tmp_path / "out" / "config.json").read_text()).keys() == json.loads(original).keys()
    assert result.parents[0]["content_id"] == content_id(pair / "base")  # the bytes read, not the edit
