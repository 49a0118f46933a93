"""`mergeops merge` end to end: output layout, manifest, determinism, pins, and bad input
(exit 2, one line naming the problem, no output directory left behind)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from flows.cli import cli
from merge.layout import INDEX_NAME, read_layout
from merge.manifest import MANIFEST_NAME, content_id
from merge.recipe import parse_recipe
from merge.run import run_merge
from merge.safetensors_header import read_header
from merge.synthetic import write_llama


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trio")
    base = write_llama(root / "base", seed=0, layers=3, shard_bytes=60_000)
    write_llama(root / "a", seed=1, base=base, layers=3)
    write_llama(root / "b", seed=2, base=base, layers=3)
    return root


def _ties(root: Path, **extra) -> dict:
    p = {"weight": 0.5, "density": 0.5}
    return {"merge_method": "ties", "base_model": str(root / "base"),
            "models": [{"model": str(root / "base")}, {"model": str(root / "a"), "parameters": p},
                       {"model": str(root / "b"), "parameters": p}], **extra}


def _cli(tmp: Path, doc: dict | str, out: Path | None = None):
    recipe = tmp / "recipe.yaml"
    recipe.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    out = out or tmp / "out"
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(out)])
    return result, out


def test_output_is_sharded_with_index_manifest_and_recipe_hash(trio, tmp_path):
    text = yaml.safe_dump(_ties(trio))
    result = run_merge(parse_recipe(text), tmp_path / "m", progress=False, shard_bytes=100_000)
    out = result.out_dir
    index = json.loads((out / INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    layout = read_layout(out)  # validates every header, the index and the tiling of offsets
    assert set(layout.tensors) == set(read_layout(trio / "base").tensors)
    for shard in shards:
        assert read_header(out / shard).metadata["mergeops.recipe_sha256"] == parse_recipe(text).sha256
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["content_id"] == result.content_id == content_id(out)
    assert {f["path"] for f in manifest["files"]} == {p.name for p in out.iterdir()} - {MANIFEST_NAME}
    assert [p["content_id"] for p in manifest["parents"]] == [content_id(trio / n) for n in ("base", "a", "b")]
    assert (out / "tokenizer.json").is_file() and json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_two_runs_give_the_same_bytes_and_content_id(trio, tmp_path, method):
    doc = _ties(trio, seed=7)
    doc["merge_method"] = method
    r = parse_recipe(yaml.safe_dump(doc))
    a = run_merge(r, tmp_path / "a", progress=False)
    b = run_merge(r, tmp_path / "b", progress=False)
    assert a.content_id == b.content_id
    if method == "dare_ties":  # another seed draws other masks
        c = run_merge(parse_recipe(yaml.safe_dump({**doc, "seed": 8})), tmp_path / "c", progress=False)
        assert c.content_id != a.content_id



@pytest.mark.parametrize("method", ["ties", "dare_ties", "slerp"])
def test_worker_count_does_not_change_a_bit(trio, tmp_path, monkeypatch, method):
    """Tensors are merged side by side on several threads; the bytes must not depend on how many."""
    doc = _ties(trio, seed=3)
    doc["merge_method"] = method
    if method == "slerp":
        doc = {"merge_method": "slerp", "base_model": str(trio / "base"), "parameters": {"t": [0.0, 0.3, 1.0]},
               "models": [{"model": str(trio / "base")}, {"model": str(trio / "a")}]}
    r = parse_recipe(yaml.safe_dump(doc))
    ids = []
    for workers in (1, 2, 4):
        monkeypatch.setattr("merge.run.compute_workers", lambda workers=workers: workers)
        ids.append(run_merge(r, tmp_path / f"w{workers}", progress=False).content_id)
    assert len(set(ids)) == 1

def test_pins_are_checked_before_merging(trio, tmp_path):
    good = content_id(trio / "a")
    ok, out = _cli(tmp_path, _ties(trio, pins={str(trio / "a"): good}))
    assert ok.exit_code == 0, ok.output
    bad, out2 = _cli(tmp_path, _ties(trio, pins={str(trio / "a"): "0" * 64}), tmp_path / "out2")
    assert bad.exit_code == 2 and "pin" in bad.output and not out2.exists()


def test_cli_success_prints_the_content_id(trio, tmp_path):
    result, out = _cli(tmp_path, _ties(trio))
    assert result.exit_code == 0, result.output
    assert json.loads((out / MANIFEST_NAME).read_text())["content_id"] in result.output


def _other_arch(trio: Path, tmp: Path) -> Path:
    d = tmp / "other-arch"
    shutil.copytree(trio / "a", d)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "mistral"}))
    return d


def _missing_tensor(trio: Path, tmp: Path) -> Path:
    d = write_llama(tmp / "missing", seed=5, layers=3)
    from safetensors.torch import load_file, save_file

    tensors = load_file(d / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(d / "model.safetensors"))
    return d


def _truncated(trio: Path, tmp: Path) -> Path:
    d = tmp / "truncated"
    shutil.copytree(trio / "a", d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    return d


BAD_RECIPES = {
    "unknown key": ("merge_method: linear\nmodels: [{model: A, parameters: {weight: 1}}]\nbase_modle: A\n", "base_modle"),
    "misspelt method": ("merge_method: tie\nmodels: [{model: A}]\n", "did you mean 'ties'"),
    "missing parameter": ("merge_method: linear\nmodels: [{model: A}, {model: B, parameters: {weight: 1}}]\n", "weight"),
    "unknown parameter": ("merge_method: ties\nbase_model: A\nmodels: [{model: A}, {model: B, parameters: {wieght: 1}}]\n", "wieght"),
    "layer range": ("merge_method: passthrough\nslices: [{sources: [{model: A, layer_range: [0, 9]}]}]\n", "out of bounds"),
    "no base": ("merge_method: ties\nmodels: [{model: A, parameters: {weight: 1}}]\n", "base_model"),
    "not yaml": ("merge_method: [linear\n", "YAML"),
    "missing parent": ("merge_method: linear\nmodels: [{model: NOPE, parameters: {weight: 1}}]\n", "not found"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPES))
def test_bad_recipe_exits_2_with_one_line_and_no_output(trio, tmp_path, case):
    text, needle = BAD_RECIPES[case]
    text = text.replace("A", str(trio / "a")).replace("B", str(trio / "b")).replace("NOPE", str(tmp_path / "nope"))
    result, out = _cli(tmp_path, text)
    assert result.exit_code == 2, result.output
    assert needle in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["recipe.yaml"]


@pytest.mark.parametrize("make,needle", [(_other_arch, "architecture"), (_missing_tensor, "up_proj"),
                                         (_truncated, "invalid safetensors")])
def test_bad_parent_exits_2_naming_parent_and_tensor(trio, tmp_path, make, needle):
    parent = make(trio, tmp_path)
    doc = {"merge_method": "linear", "models": [{"model": str(trio / "b"), "parameters": {"weight": 1}},
                                                 {"model": str(parent), "parameters": {"weight": 1}}]}
    result, out = _cli(tmp_path, doc)
    assert result.exit_code == 2, result.output
    assert needle in result.output and parent.name in result.output
    assert not out.exists()


def test_zoo_parent_of_another_shape_or_tokenizer_is_refused(tiny_zoo, tmp_path):
    m = Path(tiny_zoo) / "models"
    for odd, needle in (("odd-shape", "shape"), ("odd-tokenizer", "tokenizer"), ("odd-pickle", "pickle")):
        doc = {"merge_method": "linear", "models": [{"model": str(m / "base"), "parameters": {"weight": 1}},
                                                     {"model": str(m / odd), "parameters": {"weight": 1}}]}
        result, out = _cli(tmp_path, doc)
        assert result.exit_code == 2 and needle in result.output and odd in result.output, result.output
        assert not out.exists()


def test_existing_output_is_not_overwritten(trio, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    result, out = _cli(tmp_path, _ties(trio))
    assert result.exit_code == 2 and "not empty" in result.output
    assert (out / "keep.txt").read_text() == "x"


def test_kernel_limit_is_one_line_naming_the_tensor(tiny_zoo, tmp_path):
    """multislerp of three all-zero task vectors has no direction: exit 2, not a traceback."""
    m = Path(tiny_zoo) / "models"
    doc = {"merge_method": "multislerp", "base_model": str(m / "base"),
           "models": [{"model": str(m / n), "parameters": {"weight": 1.0}} for n in ("reverse", "sort", "swap")]}
    result, out = _cli(tmp_path, doc)
    if result.exit_code == 0:
        pytest.skip("every tensor of this zoo's specialists moved away from the base")
    assert result.exit_code == 2 and "cannot merge tensor" in result.output and not out.exists()
