"""Merge a recipe in memory: the same plan and kernels as ``run_merge``, no files written.

An evolutionary search merges hundreds of candidates of the same parents. ``ParentTensors`` reads
each input tensor once (positioned reads, as the streaming merge does) and keeps it; each candidate
is then planned from headers (cheap) and merged tensor by tensor with ``run._merge_one`` on
single-threaded kernels, so the result has the very bits ``mergeops merge`` writes for that recipe.

A multi-stage recipe keeps each intermediate in memory instead of writing and re-reading it; the
bits are the same because an intermediate is stored at its output dtype either way. Planning a
later stage still needs headers, so a stage's output must have the layout (tensor names, shapes,
dtypes) of the parent whose config it carries, which holds for every stage that merges models of
one architecture without slices or a new vocabulary; other stages are refused here (``run_merge``
merges them). ``held`` passes in models that exist only in memory (an archive of evolved models),
each with a directory of the same layout to plan from.
Memory: every parent's weights are held (parents × model size) plus the live intermediates.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import torch

from merge.errors import MergeFailed
from merge.layout import read_layout
from merge.output import all_finite
from merge.plan import FLOAT_DTYPES, MergePlan, TensorPlan, plan_merge
from merge.recipe import Recipe
from merge.run import _ST_TORCH, _Inputs, _merge_one

Tensors = dict[str, torch.Tensor]


class ParentTensors:
    """A cache of parents' input tensors (and statistics), keyed by file and tensor name."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], torch.Tensor] = {}
        self._stats: dict[tuple[str, str], torch.Tensor | None] = {}

    def load(self, plan: MergePlan, tp: TensorPlan, held: dict[str, Tensors] | None = None
             ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Fresh copies of ``tp``'s inputs (the kernels may overwrite what they are given); an input
        whose reference is in ``held`` comes from there instead of its directory."""
        tensors, stats = [], []
        with ExitStack() as files:  # opened only on a miss, closed at once: one read per tensor
            inputs = _Inputs(plan, files)
            for (p, name), params in zip(tp.inputs, tp.per_input):
                ref = plan.refs[p]
                if held is not None and ref in held:
                    tensors.append(held[ref][name].clone())
                else:
                    key = (str(plan.parents[p]), name)
                    if key not in self._cache:
                        self._cache[key] = inputs.tensor(p, name)
                    tensors.append(self._cache[key].clone())
                if "statistics" in params:
                    key = (str(plan.recipe.path_of(params["statistics"])), name)
                    if key not in self._stats:
                        self._stats[key] = inputs.statistics(params["statistics"], name)
                    stats.append(self._stats[key])
        return tensors, stats

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._cache.values())

    def clear(self) -> None:
        self._cache.clear()
        self._stats.clear()


def merge_in_memory(recipe: Recipe, parents: ParentTensors, *, device: str = "cpu",
                    held: dict[str, tuple[Tensors, Path]] | None = None) -> Tensors:
    """Output tensor name -> merged tensor (the recipe's out dtype), in plan order.

    ``held``: model reference -> (its tensors, a directory with its layout) for inputs that exist
    only in memory.
    """
    models = {ref: tensors for ref, (tensors, _) in (held or {}).items()}
    layouts = {ref: Path(where) for ref, (_, where) in (held or {}).items()}
    for ref in models:
        _check_held(ref, models[ref], layouts[ref])
    stages = (*recipe.stages, recipe)
    last_use = {st.name: max(j for j, later in enumerate(stages) if st.name in later.input_refs())
                for st in recipe.stages}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reduction order of run_merge, hence its bits
    try:
        for i, st in enumerate(stages):
            own = {r: layouts[r] for r in st.input_refs() if r in layouts}
            plan = plan_merge(st.model_copy(update={"locked": {**recipe.locked, **st.locked, **own}}))
            if plan.align is not None:  # its permutations are found from the parents' files by run_merge
                raise MergeFailed(f"align: {st.align} is not merged in memory; drop it from the recipe the "
                                  "search starts from, or merge with `mergeops merge`")
            out = _merge_plan(plan, parents, models, device)
            if i == len(stages) - 1:
                return out
            layouts[st.name] = _same_layout(st.name, plan)
            models[st.name] = out
            for name in [n for n in last_use if last_use[n] <= i and n in models]:
                del models[name]  # no later stage reads it
        raise AssertionError("unreachable: the last stage returns")
    finally:
        torch.set_num_threads(threads)


def _merge_plan(plan: MergePlan, parents: ParentTensors, held: dict[str, Tensors], device: str) -> Tensors:
    out: Tensors = {}
    for tp in plan.tensors:
        tensors, stats = parents.load(plan, tp, held)
        merged = _merge_one(plan, tp, tensors, stats, device)
        if tp.compute_dtype is not None and not all_finite(merged):
            raise MergeFailed(f"{plan.recipe.merge_method} produced NaN or inf in tensor {tp.out_name!r} "
                              f"({FLOAT_DTYPES[tp.out_dtype]}); check the recipe's weights")
        out[tp.out_name] = merged.contiguous()  # as a later stage would read it back from a file
    return out


def _same_layout(name: str, plan: MergePlan) -> Path:
    """The directory whose layout stage ``name``'s output has (its config source), checked."""
    source = plan.layouts[plan.config_source]
    produced = {tp.out_name: (tp.shape, tp.out_dtype) for tp in plan.tensors}
    expected = {n: (tuple(source.shape(n)), source.dtype(n)) for n in source.tensors}
    if produced != expected:
        diff = sorted(set(produced) ^ set(expected)) or sorted(n for n in produced if produced[n] != expected[n])
        raise MergeFailed(f"stage {name!r} does not keep the layout of {source.path} (e.g. tensor {diff[0]!r}); "
                          "an in-memory merge chains only such stages: merge this recipe with `mergeops merge`")
    return source.path


def _check_held(ref: str, tensors: Tensors, where: Path) -> None:
    """A held model has exactly the tensors (names, shapes, dtypes) of the layout it is planned
    from, as a written copy of it would: else a later dtype promotion could differ from the replay."""
    layout = read_layout(where)
    if set(tensors) != set(layout.tensors):
        raise MergeFailed(f"held model {ref!r} does not have the tensors of {where}")
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(layout.shape(name)) or t.dtype != _ST_TORCH[layout.dtype(name)]:
            raise MergeFailed(f"held model {ref!r}: tensor {name!r} is {t.dtype} {list(t.shape)}, {where} has "
                              f"{layout.dtype(name)} {list(layout.shape(name))}")
