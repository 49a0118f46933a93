"""The same recipe gives the same tensors in mergeops and in mergekit 0.1.5 (run in-process).

Deterministic methods must match bit for bit on the tiny zoo (float32) and on a bfloat16 trio.
DARE/DELLA draw their masks from per-tensor generators (mergekit: one global RNG), so they are
compared at density 1, where everything but the mask is exercised.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from merge.recipe import parse_recipe
from merge.run import run_merge
from merge.synthetic import write_llama

mergekit = pytest.importorskip("mergekit")

SELECTIVE = ("sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl")
W = {"weight": 0.6}
GTA = {"weight": 0.5, "density": 0.6}
CASES = {
    "linear": {"models": [{"model": "A", "parameters": {"weight": [0.2, 0.8]}}, {"model": "B", "parameters": {"weight": 0.5}},
                          {"model": "C", "parameters": {"weight": [{"filter": "mlp", "value": 2.0}, {"value": 1.0}]}}]},
    "slerp": {"base_model": "BASE", "models": [{"model": "BASE"}, {"model": "A"}],
              "parameters": {"t": [{"filter": "self_attn", "value": [0.0, 0.5, 1.0]}, {"value": 0.3}]}},
    "nuslerp": {"base_model": "BASE", "models": [{"model": "A", "parameters": {"weight": 0.3}},
                                                 {"model": "B", "parameters": {"weight": 0.7}}]},
    # no base: zoo specialists leave some tensors untouched, and zero task vectors have no direction
    "multislerp": {"models": [{"model": "A", "parameters": W}, {"model": "B", "parameters": {"weight": 0.2}},
                              {"model": "C", "parameters": W}]},
    "karcher": {"models": [{"model": "A"}, {"model": "B"}, {"model": "C"}]},
    "model_stock": {"base_model": "BASE", "models": [{"model": "A"}, {"model": "B"}, {"model": "C"}]},
    "task_arithmetic": {"base_model": "BASE", "models": [{"model": "A", "parameters": W}, {"model": "B", "parameters": {"weight": [0.1, 0.9]}}],
                        "parameters": {"lambda": 0.8}},
    "ties": {"base_model": "BASE", "magnitude_ties": "sort",
             "models": [{"model": "A", "parameters": GTA}, {"model": "B", "parameters": {"weight": 0.3, "density": [0.3, 0.9]}}]},
    "breadcrumbs": {"base_model": "BASE", "models": [{"model": "A", "parameters": {**GTA, "gamma": 0.05}}, {"model": "B", "parameters": GTA}]},
    "breadcrumbs_ties": {"base_model": "BASE", "models": [{"model": "A", "parameters": GTA}, {"model": "B", "parameters": GTA}]},
    "dare_ties": {"base_model": "BASE", "models": [{"model": "A", "parameters": W}, {"model": "B", "parameters": W}]},
    "dare_linear": {"base_model": "BASE", "models": [{"model": "A", "parameters": W}, {"model": "B", "parameters": W}]},
    "della": {"base_model": "BASE", "models": [{"model": "A", "parameters": W}, {"model": "B", "parameters": W}]},
    "della_linear": {"base_model": "BASE", "models": [{"model": "A", "parameters": W}, {"model": "B", "parameters": W}]},
    "sce": {"base_model": "BASE", "models": [{"model": "A"}, {"model": "B"}, {"model": "C"}],
            "parameters": {"select_topk": [0.3, 1.0]}},
    # zoo deltas have a median |delta| of ~5e-4: these t and epsilon split entries both ways
    "nearswap": {"base_model": "BASE", "models": [{"model": "BASE"}, {"model": "A"}],
                 "parameters": {"t": [{"filter": "mlp", "value": 0.001}, {"value": 0.0003}]}},
    "arcee_fusion": {"base_model": "BASE", "models": [{"model": "BASE"}, {"model": "A"}]},
    "ram": {"base_model": "BASE", "models": [{"model": "A"}, {"model": "B"}, {"model": "C"}],
            "parameters": {"epsilon": 0.0005}},
    "ramplus_tl": {"base_model": "BASE", "models": [{"model": "A"}, {"model": "B"}, {"model": "C"}],
                   "parameters": {"epsilon": 0.0005, "r": 0.5, "alpha": 0.3}},
    "passthrough": {"slices": [{"sources": [{"model": "A", "layer_range": [0, 2]}]},
                               {"sources": [{"model": "B", "layer_range": [1, 2], "parameters": {"scale": 0.5}}]}]},
}


def _load(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _substitute(obj, names: dict[str, str]):
    if isinstance(obj, dict):
        return {k: _substitute(v, names) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, names) for v in obj]
    return names.get(obj, obj) if isinstance(obj, str) else obj


def _both(doc: dict, tmp: Path) -> tuple[dict, dict]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge as mergekit_merge
    from mergekit.options import MergeOptions

    recipe = parse_recipe(yaml.safe_dump(doc))
    run_merge(recipe, tmp / "ours", progress=False)
    mergekit_merge(MergeConfiguration.model_validate(doc), str(tmp / "theirs"),
                   MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
    return _load(tmp / "ours"), _load(tmp / "theirs")


@pytest.fixture(scope="module")
def zoo_names(tiny_zoo) -> dict[str, str]:
    m = Path(tiny_zoo) / "models"
    return {"BASE": str(m / "base"), "A": str(m / "reverse"), "B": str(m / "sort"), "C": str(m / "swap")}


@pytest.mark.parametrize("method", sorted(CASES))
def test_same_tensors_as_mergekit_on_the_tiny_zoo(method, zoo_names, tmp_path):
    doc = {"merge_method": method, **_substitute(CASES[method], zoo_names)}
    ours, theirs = _both(doc, tmp_path)
    assert set(ours) == set(theirs)
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype, name
        assert torch.equal(ours[name], theirs[name]), f"{method}: {name} differs by {(ours[name] - theirs[name]).abs().max()}"
    if method in SELECTIVE:  # the case exercises the method: the output is none of its parents
        for ref in {m["model"] for m in doc["models"]}:
            parent = _load(Path(ref))
            assert any(not torch.equal(ours[n], parent[n]) for n in ours), f"{method} returned {ref}"


@pytest.fixture(scope="module")
def bf16_trio(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bf16")
    base = write_llama(root / "base", seed=0, layers=3, shard_bytes=60_000)
    return {"BASE": str(base), "A": str(write_llama(root / "a", seed=1, base=base, layers=3)),
            "B": str(write_llama(root / "b", seed=2, base=base, layers=3)),
            "C": str(write_llama(root / "c", seed=3, base=base, layers=3))}


@pytest.mark.parametrize("method", ["linear", "slerp", "ties", "task_arithmetic", "model_stock",
                                    "sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl"])
def test_same_tensors_as_mergekit_in_bfloat16_with_dtype_rules(method, bf16_trio, tmp_path):
    doc = {"merge_method": method, **_substitute(CASES[method], bf16_trio)}
    if method == "ties":
        doc["dtype"], doc["out_dtype"] = "float32", "bfloat16"
    if method in ("arcee_fusion", "ramplus_tl"):
        # their kernels return float32 for half inputs; mergekit then writes float32 unless
        # out_dtype is set (mergeops writes the working dtype: test_half_kernels_written_in_...)
        doc["out_dtype"] = "bfloat16"
    ours, theirs = _both(doc, tmp_path)
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype == torch.bfloat16
        assert torch.equal(ours[name], theirs[name]), name


def test_default_ties_differs_from_mergekit_only_at_magnitude_ties(bf16_trio, tmp_path):
    """bf16 task vectors have many equal magnitudes; which of those at the k-th largest survive is
    the only freedom, and the default (lowest index first) uses it differently from argsort."""
    doc = {"merge_method": "ties", "base_model": bf16_trio["BASE"],
           "models": [{"model": bf16_trio[m], "parameters": GTA} for m in ("A", "B")]}
    ours, theirs = _both(doc, tmp_path)
    base = _load(Path(bf16_trio["BASE"]))
    parents = [_load(Path(bf16_trio[m])) for m in ("A", "B")]
    differing = 0
    for name in theirs:
        diff = ours[name] != theirs[name]
        if not diff.any():
            continue
        differing += int(diff.sum())
        at_tie = torch.zeros_like(diff)
        for parent in parents:
            delta = (parent[name] - base[name]).abs().float()
            kth = torch.sort(delta.reshape(-1), descending=True).values[max(1, int(0.6 * delta.numel())) - 1]
            at_tie |= delta == kth
        assert not (diff & ~at_tie).any(), f"{name} differs away from a magnitude tie"
    assert 0 < differing < 0.05 * sum(t.numel() for t in theirs.values())


def test_mergekit_accepts_the_mergeops_keys():
    from mergekit.config import MergeConfiguration

    doc = {"merge_method": "ties", "base_model": "b", "models": [{"model": "b"}, {"model": "c", "parameters": GTA}],
           "name": "x", "seed": 3, "intended_use": "research", "policy": "p.yaml", "pins": {"b": "0" * 64},
           "magnitude_ties": "sort"}
    MergeConfiguration.model_validate(doc)
    assert parse_recipe(yaml.safe_dump(doc)).pins == {"b": "0" * 64}


@pytest.mark.parametrize("method", ["arcee_fusion", "ramplus_tl"])
def test_half_kernels_written_in_the_working_dtype(method, bf16_trio, tmp_path):
    """These kernels compute in float32 on bf16 parents (a float32 mask or scale). With no
    out_dtype mergekit writes that float32; mergeops writes the working dtype, as for every method,
    and the values are mergekit's rounded to it."""
    doc = {"merge_method": method, **_substitute(CASES[method], bf16_trio)}
    ours, theirs = _both(doc, tmp_path)
    for name in theirs:
        assert ours[name].dtype == torch.bfloat16 and theirs[name].dtype == torch.float32
        assert torch.equal(ours[name], theirs[name].to(torch.bfloat16)), name
