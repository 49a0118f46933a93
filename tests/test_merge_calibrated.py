"""Fisher and RegMean merges end to end: calibration statistics from the tiny zoo's domains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from evaluation.calibration import compute_statistics
from flows.cli import cli
from merge.recipe import parse_recipe
from merge.run import run_merge


@pytest.fixture(scope="module")
def stats(tiny_zoo, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stats")
    zoo = Path(tiny_zoo)
    out = {}
    for name in ("reverse", "sort"):
        data = zoo / "domains" / name / "train.jsonl"
        for kind in ("fisher", "gram"):
            out[f"{name}.{kind}"] = compute_statistics(zoo / "models" / name, data, kind=kind,
                                                       out=root / f"{name}.{kind}.safetensors", samples=8)
    return out


def _doc(zoo: Path, method: str, a: Path, b: Path) -> dict:
    return {"merge_method": method, "models": [
        {"model": str(zoo / "models" / "reverse"), "parameters": {"statistics": str(a)}},
        {"model": str(zoo / "models" / "sort"), "parameters": {"statistics": str(b)}}]}


def test_statistics_files_have_the_model_tensor_names(stats, tiny_zoo):
    model = load_file(Path(tiny_zoo) / "models" / "sort" / "model.safetensors")
    fisher = load_file(stats["sort.fisher"])
    assert set(fisher) == set(model) and all(fisher[k].shape == model[k].shape for k in model)
    assert all((v >= 0).all() for v in fisher.values()) and any(v.sum() > 0 for v in fisher.values())
    gram = load_file(stats["sort.gram"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert gram[q].shape == (model[q].shape[1],) * 2 and torch.allclose(gram[q], gram[q].T, atol=1e-5)


@pytest.mark.parametrize("method,kind", [("fisher", "fisher"), ("regmean", "gram")])
def test_calibrated_merge_differs_from_the_mean_but_equals_it_with_equal_statistics(stats, tiny_zoo, tmp_path, method, kind):
    zoo = Path(tiny_zoo)
    merged = run_merge(parse_recipe(yaml.safe_dump(_doc(zoo, method, stats[f"reverse.{kind}"], stats[f"sort.{kind}"]))),
                       tmp_path / "m", progress=False).out_dir
    same = run_merge(parse_recipe(yaml.safe_dump(_doc(zoo, method, stats[f"sort.{kind}"], stats[f"sort.{kind}"]))),
                     tmp_path / "s", progress=False).out_dir
    a = load_file(zoo / "models" / "reverse" / "model.safetensors")
    b = load_file(zoo / "models" / "sort" / "model.safetensors")
    m, s = load_file(merged / "model.safetensors"), load_file(same / "model.safetensors")
    q = "model.layers.1.mlp.down_proj.weight"
    mean = (a[q] + b[q]) / 2
    assert not torch.allclose(m[q], mean, atol=1e-4)
    assert torch.allclose(s[q], mean, atol=1e-4)


def test_missing_statistics_file_exits_2_before_merging(tiny_zoo, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_doc(Path(tiny_zoo), "fisher", tmp_path / "nope.safetensors", tmp_path / "n2")))
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "statistics file" in result.output and not (tmp_path / "out").exists()
