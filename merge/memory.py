"""Merge a recipe in memory: the same plan and kernels as ``run_merge``, no files written.

An evolutionary search merges hundreds of candidates of the same parents. ``ParentTensors`` reads
each input tensor once (positioned reads, as the streaming merge does) and keeps it; each candidate
is then planned from headers (cheap) and merged tensor by tensor with ``run._merge_one`` on
single-threaded kernels, so the result has the very bits ``mergeops merge`` writes for that recipe.
Memory: every parent's weights are held (parents × model size) plus one merged model per call.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch

from merge.errors import MergeFailed
from merge.output import all_finite
from merge.plan import FLOAT_DTYPES, MergePlan, TensorPlan, plan_merge
from merge.recipe import Recipe
from merge.run import _Inputs, _merge_one


class ParentTensors:
    """A cache of parents' input tensors (and statistics), keyed by file and tensor name."""

    def __init__(self) -> None:
        self._cache: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor | None]]] = {}

    def load(self, plan: MergePlan, tp: TensorPlan) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Fresh copies of ``tp``'s inputs: the kernels may overwrite what they are given."""
        key = tuple((str(plan.parents[p]), name) for p, name in tp.inputs) + tuple(
            str(q.get("statistics")) for q in tp.per_input)
        if key not in self._cache:
            with ExitStack() as files:  # closed at once: one read per tensor, never again
                self._cache[key] = _Inputs(plan, files).load(tp)
        tensors, stats = self._cache[key]
        return [t.clone() for t in tensors], stats

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts, _ in self._cache.values() for t in ts)

    def clear(self) -> None:
        self._cache.clear()


def merge_in_memory(recipe: Recipe, parents: ParentTensors, *, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Output tensor name -> merged tensor (the recipe's out dtype), in plan order."""
    plan = plan_merge(recipe)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reduction order of run_merge, hence its bits
    try:
        out: dict[str, torch.Tensor] = {}
        for tp in plan.tensors:
            tensors, stats = parents.load(plan, tp)
            merged = _merge_one(plan, tp, tensors, stats, device)
            if tp.compute_dtype is not None and not all_finite(merged):
                raise MergeFailed(f"{recipe.merge_method} produced NaN or inf in tensor {tp.out_name!r} "
                                  f"({FLOAT_DTYPES[tp.out_dtype]}); check the recipe's weights")
            out[tp.out_name] = merged
        return out
    finally:
        torch.set_num_threads(threads)
