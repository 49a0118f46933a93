"""Sequential RegMean statistics: each linear layer's Grams taken with every layer before it merged.

Plain RegMean fits every linear layer to the parents' outputs on the parents' own inputs, layer by
layer and independently. In the merged model, though, a layer's inputs come from the merged layers
before it, and that drift grows with depth. Here the layers are taken in the order the model runs
them. For each, the model merged so far (the regmean recipe's own settings) and each parent run the
parent's calibration data, and the statistics hold [Xₘᵀ Xₘ, Xₘᵀ Xᵢ]: the merged model's inputs
beside the parent's own on the same tokens. ``merge.kernels.regmean`` then fits
min Σᵢ |Xₘ Wᵀ − Xᵢ Wᵢᵀ|² (each layer matches the parents' outputs from the inputs it will really get),
and the layer is merged before the next one is measured. Layers that read the same input (q, k, v)
are one step.

The files are ordinary ``statistics`` of the recipe, one per parent: ``mergeops merge`` solves from
them alone and never runs a model. Each records its parent's content id and those of every parent
it was computed with (``mergeops.merged_with``), so a merge with another set of parents refuses it.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from evaluation.calibration import _encode, _examples, check_out, load_model, temp_path, write_temp
from merge.errors import UsageError
from merge.layout import read_layout
from merge.manifest import content_id, sha256_file
from merge.methods import Call
from merge.recipe import Recipe


class _Stop(Exception):
    """Raised by a hook once the step's last layer has run: the rest of the forward is not needed."""


def _scalar(params: dict | None, key: str, default: float, where: str) -> float:
    value = (params or {}).get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # a list or a conditional: per layer
        raise UsageError(f"{where}: sequential statistics need one number for {key!r}, not per-layer values")
    return float(value)


def _check(recipe: Recipe, data: list[Path]) -> tuple[list[str], list[Path], list[float]]:
    if recipe.stages or recipe.merge_method != "regmean" or not recipe.models or recipe.align:
        raise UsageError("sequential statistics are for a one-stage `merge_method: regmean` recipe with `models:`")
    refs, outs, weights = [], [], []
    for m in recipe.models:
        if m.model == recipe.base_model:
            continue
        out = (m.parameters or {}).get("statistics")
        if not isinstance(out, str):
            raise UsageError(f"{m.model}: give its `statistics` as one file path; calibrate writes it there")
        refs.append(m.model)
        outs.append(recipe.path_of(out))
        weights.append(_scalar(m.parameters, "weight", 1.0, m.model))
    if len(refs) < 2:
        raise UsageError("sequential statistics need at least two models to merge besides the base")
    if len(data) != len(refs):
        raise UsageError(f"give one --data per model in the recipe's order ({', '.join(refs)}); got {len(data)}")
    for out in outs:
        check_out(out, "a statistics path")
    if len(set(map(str, outs))) != len(outs):
        raise UsageError("two models name the same statistics file; sequential statistics are one file per model")
    return refs, outs, weights


def _steps(model, ids: torch.Tensor, stored: set[str]) -> list[list[str]]:
    """The model's linear layers in the order one forward runs them; consecutive layers reading the
    same input tensor (q, k, v; gate, up) form one step. Only layers whose weight the checkpoint
    holds under that name (``stored``) are measured: a tied output layer (the embedding's weight) and
    weights stored under other names are what the merge averages, and so does the model here."""
    calls: list[tuple[str, torch.Tensor]] = []  # the input itself, held: an id() could be reused
    hooks = [m.register_forward_hook(lambda _m, inp, _o, n=n: calls.append((n, inp[0])))
             for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and f"{n}.weight" in stored]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    steps: list[list[str]] = []
    seen, last = set(), None
    for name, source in calls:
        if name in seen:
            continue  # a layer run twice (shared weights) is fitted at its first use
        seen.add(name)
        if steps and source is last:
            steps[-1].append(name)
        else:
            steps.append([name])
        last = source
    return steps


def _inputs(model, names: list[str], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each named layer's input rows (float64) on ``ids``; the forward stops after the last of them."""
    mods = dict(model.named_modules())
    got: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_m, inp, _o):
            if name not in got:
                got[name] = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
            if len(got) == len(names):
                raise _Stop
        return fn

    hooks = [mods[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    except _Stop:
        pass
    finally:
        for h in hooks:
            h.remove()
    return got


def _measure(parent, merged_model, step: list[str], encoded: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{weight name: [Xₘᵀ Xₘ, Xₘᵀ Xᵢ] / rows}`` (float64: with alpha near 1 the solve is ill-conditioned
    and float32 loses it) for the step's layers on ``encoded``. A layer whose rows do not pair up on
    some example (a routed expert that the two models send other tokens to, a layer one of them
    skips) gets no statistics, and the merge averages it."""
    g: dict[str, torch.Tensor] = {}
    c: dict[str, torch.Tensor] = {}
    rows = dict.fromkeys(step, 0)
    unpaired: set[str] = set()
    for ids in encoded:
        own, at = _inputs(parent, step, ids), _inputs(merged_model, step, ids)
        for n in step:
            if n in own and n in at and own[n].shape == at[n].shape:
                g[n] = g[n] + at[n].T @ at[n] if n in g else at[n].T @ at[n]
                c[n] = c[n] + at[n].T @ own[n] if n in c else at[n].T @ own[n]
                rows[n] += at[n].shape[0]
            elif n in own or n in at:
                unpaired.add(n)
    return {f"{n}.weight": torch.stack([g[n], c[n]]) / rows[n] for n in step if rows[n] and n not in unpaired}


def compute_sequential(recipe: Recipe, data: list[Path], *, samples: int = 32) -> dict[str, torch.Tensor]:
    """Write the sequential statistics of ``recipe`` (a regmean recipe) to each model's ``statistics``
    path, from ``data[i]`` (calibration JSONL) for the i-th model; return the merged model's state as
    computed on the way (what ``mergeops merge`` of the recipe then builds)."""
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    refs, outs, weights = _check(recipe, data)
    params = recipe.parameters or {}
    alpha = _scalar(params, "alpha", 0.9, "parameters")
    lam = _scalar(params, "lambda", 1.0, "parameters")
    examples = [_examples(d, samples) for d in data]
    loaded = [load_model(recipe.path_of(r)) for r in refs]
    parents = [m for _, m in loaded]
    states = [m.state_dict() for m in parents]
    base = load_model(recipe.path_of(recipe.base_model))[1].state_dict() if recipe.base_model and lam != 1.0 else None
    for r, s in zip(refs[1:], states[1:]):
        if {n: t.shape for n, t in s.items()} != {n: t.shape for n, t in states[0].items()}:
            raise UsageError(f"{r}: its tensors differ in names or shapes from {refs[0]}'s; these models cannot be merged")

    lead = [] if base is None else [{}]  # the base: first input, no parameters of its own
    per_input = lead + [{"weight": w} for w in weights]

    def merge(name: str, statistics: list[torch.Tensor | None]) -> torch.Tensor:
        """The regmean method's own kernel on tensor ``name``, as the merge calls it."""
        tensors = ([] if base is None else [base[name]]) + [s[name] for s in states]
        return recipe.method.kernel(Call(name, tensors, None if base is None else 0, {"alpha": alpha, "lambda": lam},
                                         per_input, stats=statistics))

    merged_model = copy.deepcopy(parents[0])
    merged = merged_model.state_dict()
    with torch.no_grad():  # every tensor as the merge makes it without statistics (a weighted mean)
        for name in (n for n, t in merged.items() if t.is_floating_point()):
            merged[name].copy_(merge(name, [None] * len(refs)))
    encoded = [[_encode(tok, p, t)[0] for p, t in ex] for (tok, _), ex in zip(loaded, examples)]
    stored = set(read_layout(recipe.path_of(refs[0])).tensors)
    steps = _steps(merged_model, encoded[0][0], {n for n in stored if n in merged})
    if not steps:
        raise UsageError(f"{refs[0]}: no torch.nn.Linear layer whose weight the checkpoint holds; sequential "
                         "statistics are for models built of them (GPT-2's Conv1D layers are not)")
    stats: list[dict[str, torch.Tensor]] = [{} for _ in refs]
    for step in steps:
        for i, parent in enumerate(parents):
            stats[i].update(_measure(parent, merged_model, step, encoded[i]))
        with torch.no_grad():
            for n in step:
                w = f"{n}.weight"
                if all(w in st for st in stats):  # else the merge averages it, as the model here already does
                    merged[w].copy_(merge(w, [st[w] for st in stats]))
    ids = [content_id(recipe.path_of(r)) for r in refs]
    tmps = []
    try:
        for i, out in enumerate(outs):
            metadata = {"mergeops.statistics": "sequential", "mergeops.model_content_id": ids[i],
                        "mergeops.merged_with": ",".join(ids), "mergeops.data_sha256": sha256_file(data[i]),
                        "mergeops.samples": str(len(examples[i]))}
            tmps.append(temp_path(out))  # removed below if a write fails
            write_temp(out, stats[i], metadata)
        for tmp, out in zip(tmps, outs):
            tmp.replace(out)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return {n: t.detach().clone() for n, t in merged.items()}
