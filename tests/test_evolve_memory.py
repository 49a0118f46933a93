"""In-memory candidates: merged with the engine's kernels without a disk round trip (same bits as
`mergeops merge`), scored per example on a dev split disjoint from train and eval."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from evaluation.dev_scoring import DevScorer
from evaluation.dev_split import zoo_dev_records
from evaluation.domains import read_jsonl
from evaluation.errors import ModelLoadError, ZooIndexError
from evaluation.zoo.training import greedy_complete
from merge.evolve.space import RecipeSpace
from merge.memory import ParentTensors, merge_in_memory
from merge.recipe import parse_recipe
from merge.run import run_merge


def _recipe(zoo: Path, method: str, extra: str = "") -> str:
    m = zoo / "models"
    return (f"merge_method: {method}\nbase_model: {m / 'base'}\nmodels:\n  - {{model: {m / 'base'}}}\n"
            f"  - {{model: {m / 'reverse'}, parameters: {{weight: [0.2, 0.8], density: 0.6}}}}\n"
            f"  - {{model: {m / 'sort'}, parameters: {{weight: 0.5, density: [0.3, 0.9]}}}}\n"
            f"dtype: float32\n{extra}")


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_in_memory_merge_has_the_bits_of_the_written_merge(tiny_zoo: Path, tmp_path: Path, method: str) -> None:
    recipe = parse_recipe(_recipe(tiny_zoo, method, "seed: 3\n"))
    parents = ParentTensors()
    merged = merge_in_memory(recipe, parents)
    again = merge_in_memory(recipe, parents)  # the cache hands out copies: kernels cannot corrupt it
    run_merge(recipe, tmp_path / "out", progress=False)
    on_disk = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(merged) == set(on_disk)
    for name, tensor in on_disk.items():
        assert torch.equal(merged[name], tensor), name
        assert torch.equal(again[name], tensor), name
    assert parents.nbytes > 0


def test_every_candidate_of_a_recipe_space_merges_in_memory(tiny_zoo: Path) -> None:
    space = RecipeSpace(parse_recipe(_recipe(tiny_zoo, "ties")), blocks=2)
    parents = ParentTensors()
    outs = [merge_in_memory(parse_recipe(yaml.safe_dump(space.to_doc(x))), parents)
            for x in (space.bounds()[:, 0], space.bounds()[:, 1])]
    name = next(n for n in outs[0] if "layers.1.mlp" in n)
    assert not torch.equal(outs[0][name], outs[1][name])  # the parameters reach the kernels


def test_dev_split_is_disjoint_from_train_and_eval_and_reproducible(tiny_zoo: Path) -> None:
    dev = zoo_dev_records(tiny_zoo, ["reverse", "sort"], n=40)
    assert zoo_dev_records(tiny_zoo, ["reverse", "sort"], n=40) == dev
    for name, records in dev.items():
        d = tiny_zoo / "domains" / name
        used = {r["prompt"] for r in read_jsonl(d / "train.jsonl") + read_jsonl(d / "eval.jsonl")}
        prompts = [r["prompt"] for r in records]
        assert len(set(prompts)) == 40 and not used & set(prompts)
    assert dev["reverse"][0]["target"] == dev["reverse"][0]["prompt"][4:-1][::-1]
    with pytest.raises(ZooIndexError, match="no generated domain 'poetry'"):
        zoo_dev_records(tiny_zoo, ["poetry"])


def test_dev_scorer_decodes_as_the_zoo_scorecard_and_scores_per_example(tiny_zoo: Path) -> None:
    records = read_jsonl(tiny_zoo / "domains" / "reverse" / "eval.jsonl")[:4]
    records += read_jsonl(tiny_zoo / "domains" / "swap" / "eval.jsonl")[:4]
    scorer = DevScorer(tiny_zoo / "models" / "base", records)
    model_dir = tiny_zoo / "models" / "swap"
    weights = load_file(str(model_dir / "model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    expected = greedy_complete(model, tok, [r["prompt"] for r in records])  # the scorecard's decoding
    assert scorer.complete(weights) == expected
    # targets set to what the model says, but for every third: the per-example row follows exactly
    own = [{"prompt": r["prompt"], "target": o.strip() if i % 3 else "zz"} for i, (r, o) in enumerate(zip(records, expected))]
    assert DevScorer(tiny_zoo / "models" / "base", own)(weights).tolist() == [float(i % 3 != 0) for i in range(8)]
    assert scorer(weights).shape == (8,)
    with pytest.raises(ModelLoadError, match="lack"):
        scorer({k: v for k, v in weights.items() if "lm_head" not in k})
