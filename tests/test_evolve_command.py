"""`mergeops evolve`: the winner is an ordinary recipe that `mergeops merge` rebuilds byte for byte,
every M2N2 crossover replays as a slerp stage with the bits the search scored, a rerun resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from evaluation.dev_split import zoo_dev_records
from flows.cli import cli
from flows.evolve import CHECKPOINT, _Candidates, evolve
from merge.memory import ParentTensors, merge_in_memory
from merge.recipe import load_recipe, parse_recipe
from merge.run import run_merge


def _recipe(zoo: Path) -> str:
    m = zoo / "models"
    return (f"name: tiny-merge\nmerge_method: task_arithmetic\nbase_model: {m / 'base'}\nmodels:\n"
            + "".join(f"  - {{model: {m / d}, parameters: {{weight: 0.5}}}}\n" for d in ("reverse", "sort", "swap"))
            + "dtype: float32\n")


@pytest.fixture(scope="module")
def records(tiny_zoo: Path) -> list[dict]:
    dev = zoo_dev_records(tiny_zoo, ["reverse", "swap"], n=6)
    return dev["reverse"] + dev["swap"]


def _run(zoo: Path, out: Path, records, budget: int, algorithm: str = "m2n2"):
    return evolve(parse_recipe(_recipe(zoo)), out, records=records, scorer_dir=zoo / "models" / "base",
                  algorithm=algorithm, budget=budget, seed=1, progress=False)


def test_evolve_writes_a_recipe_that_merge_rebuilds_byte_for_byte_and_resumes(tiny_zoo: Path, tmp_path: Path,
                                                                              records) -> None:
    out = tmp_path / "evolved"
    first = _run(tiny_zoo, out, records, budget=6)
    assert first.evaluations == 6 and first.replayed == 0
    result = CliRunner().invoke(cli, ["merge", str(out / "recipe.yaml"), "--out", str(tmp_path / "again")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "again" / "mergeops.manifest.json").read_text())["content_id"] == first.content_id
    assert json.loads((out / "model" / "mergeops.manifest.json").read_text())["content_id"] == first.content_id

    resumed = _run(tiny_zoo, out, records, budget=9)  # the same OUT: six replayed, three new
    assert resumed.replayed == 6 and resumed.evaluations == 9
    straight = _run(tiny_zoo, tmp_path / "straight", records, budget=9)
    for name in ("recipe.yaml", "search.json", CHECKPOINT):
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert resumed.content_id == straight.content_id
    search = json.loads((out / "search.json").read_text())
    assert [g["evaluations"] for g in search["generations"]] == [8, 9]
    assert all(0.0 <= g["diversity"] <= 1.0 and g["best"] >= g["mean"] for g in search["generations"])


def test_every_crossover_replays_as_a_recipe_with_the_bits_the_search_scored(tiny_zoo: Path, tmp_path: Path,
                                                                             records) -> None:
    out = tmp_path / "evolved"
    _run(tiny_zoo, out, records, budget=10)
    evals = json.loads((out / CHECKPOINT).read_text())["evaluations"]
    crosses = [e["candidate"] for e in evals if e["candidate"]["kind"] == "cross"]
    assert len(crosses) == 10 - 4  # 4 seeds: the recipe's own merge and its three specialists
    cands = _Candidates(parse_recipe(_recipe(tiny_zoo)), "m2n2", seed=1)
    for e in evals:  # the search's own in-memory path: children of held archive members
        cands.merge(e["candidate"])
    deep = max(crosses, key=lambda c: len(cands.docs(c)))
    (tmp_path / "deep.yaml").write_text(cands.output_text(deep))
    recipe = load_recipe(tmp_path / "deep.yaml")
    assert len(recipe.stages) == len(cands.docs(deep)) - 1
    assert recipe.merge_method == "slerp" and recipe.split is not None
    written = load_file(str(run_merge(recipe, tmp_path / "deep", progress=False).out_dir / "model.safetensors"))
    scored = cands.cache.get(deep["id"]) or merge_in_memory(recipe, ParentTensors())
    assert set(written) == set(scored)
    for name, tensor in written.items():
        assert torch.equal(scored[name], tensor), name
    # the last stage holds the crossover's own split point and ratio
    last = list(yaml.safe_load_all((tmp_path / "deep.yaml").read_text()))[-1]
    assert last["parameters"]["t"] == deep["w"] and last["name"] == "tiny-merge-evolved"


@pytest.mark.parametrize("algorithm", ["cmaes", "random"])
def test_box_searches_write_the_best_point_as_a_recipe(tiny_zoo: Path, tmp_path: Path, records, algorithm) -> None:
    out = tmp_path / algorithm
    result = _run(tiny_zoo, out, records, budget=3, algorithm=algorithm)
    doc = yaml.safe_load((out / "recipe.yaml").read_text())
    assert doc["merge_method"] == "task_arithmetic" and len(doc["models"][0]["parameters"]["weight"]) == 4
    assert run_merge(load_recipe(out / "recipe.yaml"), tmp_path / "m", progress=False).content_id == result.content_id


def test_bad_input_is_one_error_line_and_leaves_nothing(tiny_zoo: Path, tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(_recipe(tiny_zoo))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    cases = [
        (["--zoo", str(tiny_zoo), "--out", str(tmp_path / "o"), "--budget", "0"], "--budget must be at least 1"),
        (["--out", str(tmp_path / "o"), "--suite", "zoo"], "give --zoo DIR"),
        (["--zoo", str(tiny_zoo), "--out", str(tmp_path / "full")], "holds no search.checkpoint.json"),
        (["--zoo", str(tmp_path), "--out", str(tmp_path / "o")], "zoo.json"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(cli, ["evolve", str(tmp_path / "r.yaml"), *args], env={"MERGEOPS_ZOO": ""})
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and message in result.output and len(result.output.splitlines()) == 1
        assert not (tmp_path / "o").exists()
    assert (tmp_path / "full" / "mine.txt").read_text() == "x"
