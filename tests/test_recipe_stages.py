"""Multi-stage recipes (named intermediate merges, mergekit-multi style) and slerp's tensor split
point: `mergeops merge` runs them, the manifest records the stage DAG, and an in-memory merge has
the same bits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from flows.cli import cli
from merge.errors import MergeFailed, RecipeError
from merge.evolve.crossover import split_slerp_tensors
from merge.manifest import MANIFEST_NAME, content_id
from merge.memory import ParentTensors, merge_in_memory
from merge.plan import plan_merge
from merge.recipe import parse_recipe
from merge.run import run_merge
from merge.synthetic import write_llama


@pytest.fixture(scope="module")
def quad(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quad")
    base = write_llama(root / "base", seed=0, layers=3)
    for i, name in enumerate(("a", "b", "c"), start=1):
        write_llama(root / name, seed=i, base=base, layers=3)
    return root


def _stages(root: Path) -> str:
    """x = slerp(a, b) split at tensor 5; y = ties(base; x, c); output = slerp(x, y)."""
    r = {n: str(root / n) for n in ("base", "a", "b", "c")}
    docs = [
        {"name": "x", "merge_method": "slerp", "base_model": r["a"], "models": [{"model": r["a"]}, {"model": r["b"]}],
         "parameters": {"t": 0.3}, "split": {"index": 5, "order": "plan"}},
        {"name": "y", "merge_method": "ties", "base_model": r["base"], "seed": 4,
         "models": [{"model": r["base"]}, {"model": "x", "parameters": {"weight": 0.6, "density": 0.5}},
                    {"model": r["c"], "parameters": {"weight": [0.2, 0.9], "density": 0.7}}]},
        {"name": "evolved", "merge_method": "slerp", "base_model": "x", "models": [{"model": "x"}, {"model": "y"}],
         "parameters": {"t": 0.55}},
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


def test_a_multi_stage_recipe_merges_on_disk_and_in_memory_to_the_same_bits(quad: Path, tmp_path: Path) -> None:
    (tmp_path / "recipe.yaml").write_text(_stages(quad))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["merge", str(tmp_path / "recipe.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "recipe.yaml"]  # intermediates removed
    on_disk = load_file(str(out / "model.safetensors"))
    recipe = parse_recipe((tmp_path / "recipe.yaml").read_bytes())
    in_memory = merge_in_memory(recipe, ParentTensors())
    assert list(in_memory) == list(on_disk)
    for name, tensor in on_disk.items():
        assert torch.equal(in_memory[name], tensor), name

    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["content_id"] == content_id(out)
    assert manifest["recipe_sha256"] == recipe.sha256
    # the parents are the models every stage reads, not the intermediates
    assert [p["path"] for p in manifest["parents"]] == [str(quad / n) for n in ("a", "b", "base", "c")]
    assert [(s["name"], s["merge_method"], s["inputs"]) for s in manifest["stages"]] == [
        ("x", "slerp", [str(quad / "a"), str(quad / "b")]),
        ("y", "ties", [str(quad / "base"), "x", str(quad / "c")]),
        ("evolved", "slerp", ["x", "y"])]
    assert manifest["stages"][-1]["content_id"] == manifest["content_id"]
    assert recipe.model_refs() == [str(quad / n) for n in ("a", "b", "base", "c")]

    rerun = run_merge(recipe, tmp_path / "rerun", progress=False)
    assert rerun.content_id == manifest["content_id"]  # deterministic, file for file


def test_the_split_point_gives_t_before_it_and_one_minus_t_after_it_as_the_crossover(quad: Path) -> None:
    doc = yaml.safe_load_all(_stages(quad)).__next__()
    doc.pop("name")
    recipe = parse_recipe(yaml.safe_dump(doc))
    plan = plan_merge(recipe)
    assert [tp.shared["t"] for tp in plan.tensors] == [0.3] * 5 + [1 - 0.3] * (len(plan.tensors) - 5)
    merged = merge_in_memory(recipe, ParentTensors())
    a, b = load_file(str(quad / "a" / "model.safetensors")), load_file(str(quad / "b" / "model.safetensors"))
    names = [tp.out_name for tp in plan.tensors]
    cross = split_slerp_tensors(0.3, 5, [a[n] for n in names], [b[n] for n in names])
    for name, tensor in zip(names, cross):
        assert torch.equal(merged[name], tensor), name
    # split at the end: one ratio everywhere, the ordinary slerp recipe
    doc["split"] = {"index": len(names)}
    whole = merge_in_memory(parse_recipe(yaml.safe_dump(doc)), ParentTensors())
    doc.pop("split")
    plain = merge_in_memory(parse_recipe(yaml.safe_dump(doc)), ParentTensors())
    assert all(torch.equal(whole[n], plain[n]) for n in names)
    doc["split"] = {"index": len(names) + 1}
    with pytest.raises(RecipeError, match=f"split.index {len(names) + 1} is past the merge's {len(names)} tensors"):
        plan_merge(parse_recipe(yaml.safe_dump(doc)))


@pytest.mark.parametrize("edit, message", [
    (lambda d: d[0].pop("name"), "stage 1: every stage but the last needs a `name`"),
    (lambda d: d[1].update(name="x"), "stage 2 (x): name 'x' is already stage 1's"),
    (lambda d: d.insert(0, d.pop(1)), "stage 1 (y): uses stage 'x' before it is made"),
    (lambda d: d[2]["models"].__setitem__(1, {"model": "x"}), "stage 2 (y) is never used by a later stage"),
    (lambda d: d[1].update(split={"index": 2}), "stage 2 (y): split applies to slerp"),
    (lambda d: d[0].update(split={"index": -1}), "split.index must be at least 0"),
    (lambda d: d[2].update(stages=[]), "stage 3 (evolved): unknown recipe key 'stages'"),
])
def test_a_malformed_stage_dag_is_one_error_line(quad: Path, tmp_path: Path, edit, message: str) -> None:
    docs = list(yaml.safe_load_all(_stages(quad)))
    edit(docs)
    text = yaml.safe_dump_all(docs, sort_keys=False)
    with pytest.raises(RecipeError, match=re.escape(message)):
        parse_recipe(text)
    (tmp_path / "r.yaml").write_text(text)
    result = CliRunner().invoke(cli, ["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and len(result.output.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_in_memory_chaining_refuses_a_stage_that_changes_the_layout(quad: Path, tmp_path: Path) -> None:
    first = {"name": "cut", "merge_method": "passthrough",
             "slices": [{"sources": [{"model": str(quad / "a"), "layer_range": [0, 2]}]}]}
    last = {"merge_method": "linear", "models": [{"model": "cut", "parameters": {"weight": 1.0}}]}
    recipe = parse_recipe(yaml.safe_dump_all([first, last]))
    with pytest.raises(MergeFailed, match="stage 'cut' does not keep the layout"):
        merge_in_memory(recipe, ParentTensors())
    result = run_merge(recipe, tmp_path / "out", progress=False)  # on disk the chain runs
    assert len(result.manifest["stages"]) == 2
