"""merge/evolve: M2N2's rules on hand-made score matrices, crossover endpoints, CMA-ES and random
search, and resuming from a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from merge.errors import RecipeError
from merge.evolve.crossover import split_index, split_slerp_flat, split_slerp_tensors, tensor_ratios
from merge.evolve.m2n2 import (M2N2, M2N2Config, attraction, competition_fitness, select_parents,
                               weakest_replaced)
from merge.evolve.objective import Objective
from merge.evolve.search import CheckpointError, SearchSpec, read_checkpoint, run_search
from merge.evolve.space import RecipeSpace
from merge.params import resolve
from merge.recipe import parse_recipe

S = np.array([[1, 1, 0], [1, 0, 1], [0, 0, 1]], dtype=float)


def test_competition_shares_each_example_among_the_members_that_solve_it() -> None:
    # z = [2, 1, 2]: example 1 is solved by member 0 alone and is worth a whole point to it
    assert competition_fitness(S, alpha=1.0) == pytest.approx([0.5 + 1.0, 0.5 + 0.5, 0.5])
    # alpha = 0: a plain genetic algorithm, fitness is the total score
    assert competition_fitness(S, alpha=0.0) == pytest.approx([2, 2, 1])
    # per-example weights c_j scale each example's worth
    assert competition_fitness(S, alpha=1.0, c=np.array([2, 0, 1])) == pytest.approx([1.0, 1.5, 0.5])


def test_attraction_counts_what_b_solves_and_a_does_not() -> None:
    g = attraction(S, a=2)  # A solves only example 2
    assert g == pytest.approx([0.5 + 1.0, 0.5, 0.0])
    assert attraction(S, a=0) == pytest.approx([0.0, 0.5, 0.5])  # both add example 2, shared by two
    assert attraction(S, a=0, c=np.array([1, 1, 4])) == pytest.approx([0.0, 2.0, 2.0])


def test_parent_a_follows_fitness_and_b_follows_attraction() -> None:
    scores = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=float)
    rng = np.random.default_rng(0)
    pairs = [select_parents(scores, rng) for _ in range(400)]
    firsts = np.bincount([a for a, _ in pairs], minlength=4)
    assert firsts[2] == 0  # solves nothing: no fitness, never parent A
    assert firsts[1] > firsts[0]  # member 1 holds example 2 alone (fitness 1 vs 0.5 each for 0 and 3)
    for a, b in pairs:
        assert b != 2  # solves nothing: attracts no one
        if a in (0, 3):
            assert b == 1  # the only member solving what A lacks
        else:
            assert b in (0, 3)


def test_a_child_that_repeats_a_crowded_niche_does_not_displace_a_unique_one() -> None:
    archive = np.array([[1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1]], dtype=float)
    child = np.array([1, 1, 0, 0], dtype=float)  # total 2 > 1, but only what two members solve already
    assert weakest_replaced(archive, child, alpha=0.0) == 2  # plain GA: the higher total wins
    assert weakest_replaced(archive, child, alpha=1.0) is None  # f = 1/3 + 1/3 < 1 for the unique niche
    better = np.array([0, 0, 1, 1], dtype=float)  # the unique example and a less crowded one
    assert weakest_replaced(archive, better, alpha=1.0) == 2  # f = 1/3 + 1/2 vs 1/2: it wins the niche


def test_m2n2_seeds_the_archive_with_the_parents_then_replaces_only_when_better() -> None:
    search = M2N2(2, M2N2Config(archive_size=3), np.random.default_rng(1))
    seeds = [search.ask() for _ in range(1)]
    assert seeds[0] == {"id": 0, "kind": "seed", "parent": 0}
    search.tell(seeds[0], np.array([1, 1, 0, 0]))
    second = search.ask()
    assert second["kind"] == "seed" and second["parent"] == 1
    search.tell(second, np.array([0, 0, 1, 0]))
    child = search.ask()
    assert child["kind"] == "cross" and {child["a"], child["b"]} == {0, 1}
    assert 0 <= child["split"] < 1 and 0 <= child["w"] < 1
    search.tell(child, np.array([0, 0, 0, 0]))  # archive not full yet: kept
    assert search.ids == [0, 1, 2]
    worse = search.ask()
    search.tell(worse, np.array([0, 0, 0, 0]))  # no better than the weakest: dropped
    assert search.ids == [0, 1, 2]
    better = search.ask()
    search.tell(better, np.array([0, 0, 0, 1]))
    assert search.ids == [0, 1, 4]
    assert search.best() == 0


def test_crossover_endpoints_are_the_parents() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, generator=g), torch.randn(50, generator=g)
    assert torch.allclose(split_slerp_flat(0.0, 50, a, b), a, atol=1e-6)
    assert torch.allclose(split_slerp_flat(1.0, 50, a, b), b, atol=1e-6)
    assert torch.allclose(split_slerp_flat(1.0, 0, a, b), a, atol=1e-6)  # after the split: 1 - w
    mixed = split_slerp_flat(0.0, 20, a, b)  # w = 0 before, 1 after: A's head, B's tail
    assert torch.allclose(mixed[:20], a[:20], atol=1e-6) and torch.allclose(mixed[20:], b[20:], atol=1e-6)
    ta = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    tb = [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]
    assert all(torch.equal(x, y) for x, y in zip(split_slerp_tensors(0.0, 2, ta, tb), ta))
    assert all(torch.equal(x, y) for x, y in zip(split_slerp_tensors(1.0, 2, ta, tb), tb))
    head_a = split_slerp_tensors(0.0, 1, ta, tb)
    assert torch.equal(head_a[0], ta[0]) and torch.equal(head_a[1], tb[1])
    assert tensor_ratios(0.3, 1, 3) == [0.3, 0.7, 0.7]
    assert [split_index(u, 4) for u in (0.0, 0.24, 0.25, 0.999)] == [0, 0, 1, 3]


def _flat_fitness(dim: int = 16, examples: int = 40):
    """A tiny real problem: a linear classifier's per-example correctness on fixed points, for seed
    vectors and split-point crossovers of them (materialised recursively, memoised)."""
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(examples, dim, generator=g)
    labels = (xs @ torch.randn(dim, generator=g)) > 0
    seeds = [torch.randn(dim, generator=g) for _ in range(2)]
    models: dict[int, torch.Tensor] = {}
    calls = []

    def fitness(c: dict) -> np.ndarray:
        calls.append(c["id"])
        if c["kind"] == "seed":
            v = seeds[c["parent"]]
        elif c["kind"] == "cross":
            v = split_slerp_flat(c["w"], split_index(c["split"], dim), models[c["a"]], models[c["b"]])
        else:
            v = torch.tensor(c["x"], dtype=torch.float32)
        models[c["id"]] = v
        return (((xs @ v) > 0) == labels).double().numpy()

    return fitness, calls


@pytest.mark.parametrize("algorithm", ["m2n2", "cmaes", "random"])
def test_resume_gives_the_uninterrupted_run(tmp_path: Path, algorithm: str) -> None:
    spec = SearchSpec(algorithm=algorithm, seed=7, n_seeds=2, bounds=((-1.0, 1.0),) * 16,
                      m2n2=M2N2Config(archive_size=5))
    fit, _ = _flat_fitness()
    whole = run_search(spec, fit, 30)
    ckpt = tmp_path / "search.ckpt.json"
    fit1, _ = _flat_fitness()
    run_search(spec, fit1, 12, checkpoint=ckpt)
    assert len(json.loads(ckpt.read_text())["evaluations"]) == 12
    fit2, calls = _flat_fitness()
    if algorithm == "m2n2":  # the replay never scores, so the resumed fitness must rebuild its models
        for ev in whole.evaluations[:12]:
            fit2(ev.candidate)
        calls.clear()
    resumed = run_search(spec, fit2, 30, checkpoint=ckpt)
    assert calls == list(range(12, 30))  # the first 12 were replayed, not scored
    assert [e.candidate for e in resumed.evaluations] == [e.candidate for e in whole.evaluations]
    assert all(np.array_equal(x.scores, y.scores) for x, y in zip(resumed.evaluations, whole.evaluations))
    if algorithm == "m2n2":
        assert resumed.search.ids == whole.search.ids


def test_a_checkpoint_of_another_search_is_refused(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.json"
    fit, _ = _flat_fitness()
    run_search(SearchSpec(algorithm="random", seed=1, bounds=((0.0, 1.0),) * 16), fit, 3, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="another search"):
        run_search(SearchSpec(algorithm="random", seed=2, bounds=((0.0, 1.0),) * 16), fit, 5, checkpoint=ckpt)
    ckpt.write_text("{not json")
    with pytest.raises(CheckpointError):
        run_search(SearchSpec(algorithm="random", seed=1, bounds=((0.0, 1.0),) * 16), fit, 5, checkpoint=ckpt)


def test_cmaes_climbs_where_random_search_wanders() -> None:
    target = np.linspace(0.2, 0.8, 6)

    def fitness(c: dict) -> np.ndarray:  # per-example closeness to the target, one example per dim
        return np.exp(-((np.array(c["x"]) - target) ** 2) * 50)

    bounds = ((0.0, 1.0),) * 6
    cma = run_search(SearchSpec(algorithm="cmaes", seed=0, bounds=bounds), fitness, 240)
    rnd = run_search(SearchSpec(algorithm="random", seed=0, bounds=bounds), fitness, 240)
    assert cma.best().mean > 0.95
    assert cma.best().mean > rnd.best().mean
    first = np.mean([e.mean for e in cma.evaluations[:8]])
    assert np.mean([e.mean for e in cma.evaluations[-8:]]) > first


TIES = """
merge_method: ties
base_model: base
models:
  - {model: base}
  - {model: a, parameters: {weight: 0.7, density: 0.5}}
  - {model: b, parameters: {weight: 0.3, density: 0.5}}
dtype: float32
"""


def test_recipe_space_writes_per_block_gradients_into_an_ordinary_recipe() -> None:
    space = RecipeSpace(parse_recipe(TIES), blocks=3)
    assert space.dim == 2 * 2 * 3  # (weight, density) x (a, b) x blocks
    assert space.x0()[:3].tolist() == [0.7, 0.7, 0.7]
    x = np.linspace(0.0, 1.0, space.dim)
    doc = space.to_doc(x)
    again = parse_recipe(yaml.safe_dump(doc))  # a valid recipe
    a = next(m for m in again.models if m.model == "a")
    assert a.parameters["weight"] == [0.0, round(1 / 11, 6), round(2 / 11, 6)]
    assert min(a.parameters["density"]) >= 0.05  # clipped into the density's range
    assert next(m for m in again.models if m.model == "base").parameters is None
    slerp = RecipeSpace(parse_recipe("merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\n"
                                     "parameters: {t: 0.25}\n"), blocks=2)
    assert slerp.dim == 2 and slerp.x0().tolist() == [0.25, 0.25]
    assert parse_recipe(yaml.safe_dump(slerp.to_doc([0.1, 0.9]))).parameters["t"] == [0.1, 0.9]
    with pytest.raises(RecipeError, match="cannot tune"):
        RecipeSpace(parse_recipe("merge_method: karcher\nmodels: [{model: a}, {model: b}]\n"))


def test_recipe_space_tunes_regmean_weights_as_ratios_and_its_lambda() -> None:
    recipe = parse_recipe("merge_method: regmean\nbase_model: base\nmodels:\n  - {model: base}\n"
                          "  - {model: a, parameters: {statistics: a.st, weight: 2.0}}\n"
                          "  - {model: b, parameters: {statistics: b.st}}\nparameters: {lambda: 1.2}\n")
    space = RecipeSpace(recipe, blocks=2)
    assert [(p.model, p.param) for p in space.params] == [("a", "weight"), ("b", "weight"), (None, "alpha"),
                                                           (None, "lambda")]
    # only the weights' ratio counts: the largest starts mid-range, so CMA-ES does not start on a wall
    assert space.x0().tolist() == [0.5, 0.5, 0.25, 0.25, 0.9, 0.9, 1.2, 1.2]
    assert space.bounds()[0, 0] > 0 and space.bounds()[4, 1] < 1  # no weight 0, no alpha 1 (singular Grams)
    again = parse_recipe(yaml.safe_dump(space.to_doc([0.0, 1.0, 0.3, 0.3, 0.7, 1.0, 3.0, 0.6])))
    a = next(m for m in again.models if m.model == "a")
    assert a.parameters["weight"] == [0.02, 1.0] and a.parameters["statistics"] == "a.st"
    assert again.parameters["alpha"] == [0.7, 0.99] and again.parameters["lambda"] == [2.0, 0.6]
    assert next(m for m in again.models if m.model == "base").parameters is None
    no_base = RecipeSpace(parse_recipe("merge_method: fisher\nmodels:\n  - {model: a, parameters: {statistics: a.st}}\n"
                                       "  - {model: b, parameters: {statistics: b.st}}\n"), blocks=1)
    assert [(p.model, p.param) for p in no_base.params] == [("a", "weight"), ("b", "weight")]


def test_retention_is_the_least_group_score_over_its_reference_and_skips_groups_no_parent_has() -> None:
    obj = Objective("retention", sizes=(2, 2, 3), reference=(0.5, 1.0, 0.04), names=("a", "b", "c"))
    scores = np.array([1, 0, 1, 0, 1, 1, 1])  # a 0.5 of 0.5, b 0.5 of 1.0, c (reference under 5%) ignored
    assert obj.retention(scores) == pytest.approx([1.0, 0.5])
    assert obj(scores) == pytest.approx(0.5 + 0.1 * 0.75)
    # a candidate better on its weakest group ranks higher even with a lower mean
    balanced, lopsided = np.array([1, 0, 1, 0, 0, 0, 0]), np.array([1, 1, 0, 0, 1, 1, 1])
    assert balanced.mean() < lopsided.mean() and obj(balanced) > obj(lopsided)
    described = obj.describe(scores)
    assert described["groups"]["b"] == {"score": 0.5, "reference": 1.0, "retention": 0.5}
    assert described["groups"]["c"]["retention"] is None
    assert Objective()(scores) == pytest.approx(5 / 7)  # mean
    with pytest.raises(ValueError, match="scores for groups"):
        obj(np.ones(5))
    with pytest.raises(ValueError, match="unknown objective"):
        Objective("median")


def test_cmaes_and_the_winner_follow_the_objective_and_a_checkpoint_keeps_it(tmp_path: Path) -> None:
    # two groups of examples; the first is easy to gain on and the second is the one left behind
    def fitness(c: dict) -> np.ndarray:
        x = np.array(c["x"])
        return np.concatenate([np.full(4, 1 - abs(x[0] - 0.9)), np.full(2, 1 - abs(x[1] - 0.3)) * 0.5])

    obj = Objective("retention", sizes=(4, 2), reference=(1.0, 0.5), names=("easy", "hard"))
    spec = SearchSpec(algorithm="cmaes", seed=0, bounds=((0.0, 1.0),) * 2, objective=obj)
    ckpt = tmp_path / "ckpt.json"
    result = run_search(spec, fitness, 120, checkpoint=ckpt)
    assert result.best() == max(result.evaluations, key=lambda e: obj(e.scores))
    assert abs(result.best().candidate["x"][1] - 0.3) < 0.05  # the weak group was pulled up, not ignored
    assert read_checkpoint(ckpt)[0] == spec  # the objective survives the JSON round trip
    with pytest.raises(CheckpointError, match="another search"):
        run_search(SearchSpec(algorithm="cmaes", seed=0, bounds=((0.0, 1.0),) * 2), fitness, 130, checkpoint=ckpt)


LLAMA_NAMES = ["model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"] + [
    f"model.layers.{i}.{part}.weight" for i in range(3)
    for part in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "input_layernorm")]


def test_recipe_space_tunes_each_tensor_kind_with_filters_that_pick_out_exactly_its_tensors() -> None:
    recipe = parse_recipe(TIES)
    space = RecipeSpace(recipe, blocks=2, tensor_names=LLAMA_NAMES, config={"num_hidden_layers": 3})
    assert [g.filter for g in space.groups] == [".self_attn.", ".mlp.", ".input_layernorm.",
                                                "model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"]
    assert space.per_param == 3 * 2 + 3 and space.dim == 2 * 2 * space.per_param
    x = np.arange(space.dim) / space.dim  # every value distinct, inside both ranges
    again = parse_recipe(yaml.safe_dump(space.to_doc(x)))
    a = next(m for m in again.models if m.model == "a")
    param = again.method.param("weight")
    # a's weights are x[0:9]: attention block values 0, 1; mlp 2, 3; layernorm 4, 5; then one each
    for name, t, at in [("model.layers.0.self_attn.q_proj.weight", 0.0, 0), ("model.layers.2.self_attn.o_proj.weight", 1.0, 1),
                        ("model.layers.2.mlp.up_proj.weight", 1.0, 3), ("model.layers.0.input_layernorm.weight", 0.0, 4),
                        ("model.embed_tokens.weight", 0.0, 6), ("lm_head.weight", 1.0, 7), ("model.norm.weight", 1.0, 8)]:
        assert resolve(param, [a.parameters], name, t, "a") == pytest.approx(round(x[at], 6)), name
    # a tensor outside the layers whose name holds a layer kind's filter: filters would be ambiguous
    odd = RecipeSpace(recipe, blocks=2, tensor_names=LLAMA_NAMES + ["vision.mlp.weight"])
    assert [g.filter for g in odd.groups] == [None] and odd.dim == 2 * 2 * 2
    # a layer tensor with nothing after its index has no kind a filter can name
    bare = RecipeSpace(recipe, blocks=2, tensor_names=[f"h.{i}.weight" for i in range(3)] + ["wte.weight"],
                       config={"n_layer": 3})
    assert [g.filter for g in bare.groups] == [None]
