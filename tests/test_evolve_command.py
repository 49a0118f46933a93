"""`mergeops evolve`: the winner is an ordinary recipe that `mergeops merge` rebuilds byte for byte,
every M2N2 crossover replays as a slerp stage with the bits the search scored, a rerun resumes.

One small search is shared by the module: five candidates, then the same OUT resumed to seven, and
the same seven uninterrupted in another OUT (four seeds: the recipe's own merge and its three
specialists; three crossovers), scored on four dev prompts of each of two domains.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from evaluation.dev_split import zoo_dev_records
from flows.cli import cli
from flows.evolve import BLOCKS, CHECKPOINT, _Candidates, evolve
from merge.memory import ParentTensors, merge_in_memory
from merge.recipe import load_recipe, parse_recipe
from merge.run import run_merge

BUDGET, FIRST = 7, 5


def _recipe(zoo: Path) -> str:
    m = zoo / "models"
    return (f"name: tiny-merge\nmerge_method: task_arithmetic\nbase_model: {m / 'base'}\nmodels:\n"
            + "".join(f"  - {{model: {m / d}, parameters: {{weight: 0.5}}}}\n" for d in ("reverse", "sort", "swap"))
            + "dtype: float32\n")


@pytest.fixture(scope="module")
def records(tiny_zoo: Path) -> list[dict]:
    dev = zoo_dev_records(tiny_zoo, ["reverse", "swap"], n=4)
    return [{**r, "group": d} for d in ("reverse", "swap") for r in dev[d]]


def _run(zoo: Path, out: Path, records, budget: int, algorithm: str = "m2n2", granularity: str = "block"):
    return evolve(parse_recipe(_recipe(zoo)), out, records=records, scorer_dir=zoo / "models" / "base",
                  algorithm=algorithm, budget=budget, seed=1, granularity=granularity, progress=False)


@pytest.fixture(scope="module")
def searched(tiny_zoo: Path, tmp_path_factory, records) -> dict:
    root = tmp_path_factory.mktemp("evolve")
    first = _run(tiny_zoo, root / "resumed", records, budget=FIRST)
    resumed = _run(tiny_zoo, root / "resumed", records, budget=BUDGET)  # the same OUT: five replayed, two new
    straight = _run(tiny_zoo, root / "straight", records, budget=BUDGET)
    return {"root": root, "first": first, "resumed": resumed, "straight": straight}


def test_a_resumed_search_is_the_uninterrupted_one(searched) -> None:
    first, resumed, straight = searched["first"], searched["resumed"], searched["straight"]
    assert first.evaluations == FIRST and first.replayed == 0
    assert resumed.evaluations == BUDGET and resumed.replayed == FIRST
    assert straight.evaluations == BUDGET and straight.replayed == 0
    for name in ("recipe.yaml", "search.json", CHECKPOINT):
        assert (resumed.out_dir / name).read_bytes() == (straight.out_dir / name).read_bytes(), name
    assert resumed.content_id == straight.content_id
    search = json.loads((straight.out_dir / "search.json").read_text())
    assert search["evaluations"] == BUDGET and search["dev_examples"] == 8
    assert search["generations"][-1]["evaluations"] == BUDGET
    assert all(0.0 <= g["diversity"] <= 1.0 and g["best"] >= g["mean"] for g in search["generations"])
    assert search["best"]["dev_score"] == pytest.approx(straight.dev_score)
    assert search["objective"] == "retention" and search["best"]["objective"] == pytest.approx(straight.objective)


def test_retention_is_measured_against_the_best_parent_of_each_domain(tiny_zoo: Path, searched, records) -> None:
    from evaluation.dev_scoring import DevScorer

    search = json.loads((searched["straight"].out_dir / "search.json").read_text())
    scorer = DevScorer(tiny_zoo / "models" / "base", records)
    best = {d: 0.0 for d in ("reverse", "swap")}
    for name in ("reverse", "sort", "swap"):  # the recipe's models other than the base
        s = scorer(load_file(str(tiny_zoo / "models" / name / "model.safetensors")))
        best = {"reverse": max(best["reverse"], s[:4].mean()), "swap": max(best["swap"], s[4:].mean())}
    assert search["reference"] == pytest.approx(best)
    groups = search["best"]["groups"]
    kept = {d for d, v in best.items() if v >= 0.05}
    if kept:  # a group where no parent reaches 5% is not scored at all
        assert set(groups) == kept
        least = min(g["retention"] for g in groups.values())
        mean = np.mean([g["retention"] for g in groups.values()])
        assert search["best"]["objective"] == pytest.approx(least + 0.1 * mean)
    else:  # the tiny zoo's parents solve nothing: nothing to retain, the objective is the mean score
        assert set(groups) == {"reverse", "swap"} and all(g["retention"] is None for g in groups.values())
        assert search["best"]["objective"] == pytest.approx(search["best"]["dev_score"])


def test_merge_of_the_written_recipe_rebuilds_the_model_byte_for_byte(searched) -> None:
    out = searched["straight"].out_dir
    again = searched["root"] / "again"
    result = CliRunner().invoke(cli, ["merge", str(out / "recipe.yaml"), "--out", str(again)])
    assert result.exit_code == 0, result.output
    cid = searched["straight"].content_id
    assert json.loads((again / "mergeops.manifest.json").read_text())["content_id"] == cid
    assert json.loads((out / "model" / "mergeops.manifest.json").read_text())["content_id"] == cid
    for shard in again.glob("*.safetensors"):
        assert shard.read_bytes() == (out / "model" / shard.name).read_bytes(), shard.name


def test_every_crossover_replays_as_a_recipe_with_the_bits_the_search_scored(tiny_zoo: Path, searched) -> None:
    root = searched["root"]
    evals = json.loads((searched["straight"].out_dir / CHECKPOINT).read_text())["evaluations"]
    crosses = [e["candidate"] for e in evals if e["candidate"]["kind"] == "cross"]
    assert len(crosses) == BUDGET - 4  # 4 seeds: the recipe's own merge and its three specialists
    cands = _Candidates(parse_recipe(_recipe(tiny_zoo)), "m2n2", seed=1)
    for e in evals:  # the search's own in-memory path: children of held archive members
        cands.merge(e["candidate"])
    deep = max(crosses, key=lambda c: len(cands.docs(c)))
    (root / "deep.yaml").write_text(cands.output_text(deep))
    recipe = load_recipe(root / "deep.yaml")
    assert len(recipe.stages) == len(cands.docs(deep)) - 1
    assert recipe.merge_method == "slerp" and recipe.split is not None
    written = load_file(str(run_merge(recipe, root / "deep", progress=False).out_dir / "model.safetensors"))
    scored = cands.cache.get(deep["id"]) or merge_in_memory(recipe, ParentTensors())
    assert set(written) == set(scored)
    for name, tensor in written.items():
        assert torch.equal(scored[name], tensor), name
    # the last stage holds the crossover's own split point and ratio
    last = list(yaml.safe_load_all((root / "deep.yaml").read_text()))[-1]
    assert last["parameters"]["t"] == deep["w"] and last["name"] == "tiny-merge-evolved"


@pytest.mark.parametrize("algorithm,granularity", [("cmaes", "kind"), ("random", "block")])
def test_box_searches_write_the_best_point_as_a_recipe(tiny_zoo: Path, tmp_path: Path, records, algorithm,
                                                        granularity) -> None:
    out = tmp_path / algorithm
    result = _run(tiny_zoo, out, records, budget=2, algorithm=algorithm, granularity=granularity)
    doc = yaml.safe_load((out / "recipe.yaml").read_text())
    assert doc["merge_method"] == "task_arithmetic"
    weight = doc["models"][0]["parameters"]["weight"]
    if granularity == "kind":  # a gradient of BLOCKS points per kind of layer tensor, a value outside
        weights = {w["filter"]: w["value"] for w in weight}
        assert len(weights[".self_attn."]) == len(weights[".mlp."]) == BLOCKS
        assert isinstance(weights["lm_head.weight"], float)
    else:
        assert len(weight) == BLOCKS and all(isinstance(w, float) for w in weight)
    # the written recipe is the best point the search scored, and OUT/model is its merge
    best = json.loads((out / "search.json").read_text())["best"]["candidate"]
    cands = _Candidates(parse_recipe(_recipe(tiny_zoo)), algorithm, seed=1, granularity=granularity)
    assert doc == {**cands.docs(best)[0], "name": "tiny-merge-evolved"}
    assert json.loads((out / "model" / "mergeops.manifest.json").read_text())["content_id"] == result.content_id


def test_a_regmean_recipe_evolves_into_one_that_merge_rebuilds_byte_for_byte(tiny_zoo: Path, tmp_path: Path,
                                                                             records) -> None:
    from evaluation.calibration import compute_statistics

    m = tiny_zoo / "models"
    text = f"name: tiny-regmean\nmerge_method: regmean\nbase_model: {m / 'base'}\nmodels:\n  - {{model: {m / 'base'}}}\n"
    for d in ("reverse", "swap"):
        st = compute_statistics(m / d, tiny_zoo / "domains" / d / "train.jsonl", kind="gram",
                                out=tmp_path / f"{d}.gram.safetensors", samples=8)
        text += f"  - {{model: {m / d}, parameters: {{statistics: {st}}}}}\n"
    out = tmp_path / "evolved"
    result = evolve(parse_recipe(text), out, records=records, scorer_dir=m / "base", algorithm="cmaes",
                    budget=3, seed=1, progress=False)
    doc = yaml.safe_load((out / "recipe.yaml").read_text())
    assert doc["merge_method"] == "regmean" and len(doc["parameters"]["lambda"]) == BLOCKS
    assert all(len(e["parameters"]["weight"]) == BLOCKS for e in doc["models"][1:])
    again = run_merge(load_recipe(out / "recipe.yaml"), tmp_path / "again", progress=False)
    assert again.content_id == result.content_id
    assert (out / "model" / "model.safetensors").read_bytes() == (again.out_dir / "model.safetensors").read_bytes()


def test_bad_input_is_one_error_line_and_leaves_nothing(tiny_zoo: Path, tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(_recipe(tiny_zoo))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    cases = [
        (["--zoo", str(tiny_zoo), "--out", str(tmp_path / "o"), "--budget", "0"], "--budget must be at least 1"),
        (["--zoo", str(tiny_zoo), "--out", str(tmp_path / "o"), "--budget", "0", "--register", "x"],
         "--budget must be at least 1"),  # before Prefect starts
        (["--zoo", str(tiny_zoo), "--out", str(tmp_path / "o"), "--dev-size", "0"], "--dev-size must be at least 1"),
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


def test_a_suite_of_your_own_names_each_domains_dev_split(tiny_zoo: Path, tmp_path: Path) -> None:
    from flows.evolve import dev_records

    dev = zoo_dev_records(tiny_zoo, ["reverse", "swap"], n=3)
    evals = {d: (tiny_zoo / "domains" / d / "eval.jsonl") for d in ("reverse", "swap")}
    for d in ("reverse", "swap"):  # the dev file in columns of its own naming
        (tmp_path / f"{d}-dev.jsonl").write_text("".join(json.dumps({"q": r["prompt"], "a": r["target"]}) + "\n"
                                                        for r in dev[d]))
    suite = {"name": "mine", "domains": {d: {"tasks": [{"data": str(evals[d])}],
                                             "dev": {"data": f"{d}-dev.jsonl", "prompt": "q", "target": "a"}}
                                         for d in ("reverse", "swap")}}
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(suite))
    records = dev_records(str(tmp_path / "mine.yaml"), None)
    assert [(r["group"], r["prompt"], r["target"]) for r in records] == \
        [(d, r["prompt"], r["target"]) for d in ("reverse", "swap") for r in dev[d]]
    assert len(dev_records(str(tmp_path / "mine.yaml"), None, per_domain=2)) == 4
    # a search on it: its search.json names the suite's domains
    (tmp_path / "r.yaml").write_text(_recipe(tiny_zoo))
    result = CliRunner().invoke(cli, ["evolve", str(tmp_path / "r.yaml"), "--suite", str(tmp_path / "mine.yaml"),
                                      "--out", str(tmp_path / "out"), "--budget", "2", "--algorithm", "random"])
    assert result.exit_code == 0, result.output
    assert set(json.loads((tmp_path / "out" / "search.json").read_text())["best"]["groups"]) == {"reverse", "swap"}
    # a dev row that is also an eval row, and a domain without a dev split: one line each, nothing written
    leak = json.loads(evals["swap"].read_text().splitlines()[0])
    with (tmp_path / "swap-dev.jsonl").open("a") as fh:
        fh.write(json.dumps({"q": leak["prompt"], "a": leak["target"]}) + "\n")
    del suite["domains"]["reverse"]["dev"]
    (tmp_path / "nodev.yaml").write_text(yaml.safe_dump(suite))
    for name, message in (("mine.yaml", "are in its eval data"), ("nodev.yaml", "has no dev split")):
        result = CliRunner().invoke(cli, ["evolve", str(tmp_path / "r.yaml"), "--suite", str(tmp_path / name),
                                          "--out", str(tmp_path / "o2"), "--budget", "2"])
        assert result.exit_code == 2 and result.output.startswith("error: ") and message in result.output, result.output
        assert len(result.output.splitlines()) == 1 and not (tmp_path / "o2").exists()
