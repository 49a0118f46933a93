"""Plan a merge from headers only: which input tensors make each output tensor, with which
parameters, dtypes and shapes. Every problem is raised here, before a single weight is read.

Architecture-agnostic: the layer stack is the largest family of names ``<prefix>.<i>.<rest>``
(``model.layers.3.mlp.up_proj.weight``); everything else is a pre-layer tensor (names with
``embed``/``wte``/``wpe``) or a post-layer one (final norm, head). Slices re-index layers the way
mergekit does; ``t`` for gradients is the layer's position within its slice.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merge.errors import CompatibilityError, FormatError, RecipeError
from merge.layout import ModelLayout, compare_layouts, read_layout, tokenizer_fingerprint
from merge.params import resolve
from merge.recipe import Recipe
from merge.safetensors_header import read_header
from merge.vocab import VocabPlan, plan_vocab

FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_ST_DTYPE = {v: k for k, v in FLOAT_DTYPES.items()}
_RANK = {"F16": 1, "BF16": 1, "F32": 2, "F64": 3}
_LAYER_RE = re.compile(r"^(.*?)\.(\d+)\.(.+)$")
_PRE_HINTS = ("embed", "wte", "wpe", "word_embeddings")


@dataclass(frozen=True)
class TensorPlan:
    out_name: str
    inputs: tuple[tuple[int, str], ...]  # (parent index, input tensor name), recipe order
    base_index: int | None  # index into ``inputs``
    t: float
    shared: dict[str, Any]
    per_input: tuple[dict[str, Any], ...]
    shape: tuple[int, ...]
    compute_dtype: str | None  # safetensors dtype name; None: non-float tensor, copied
    out_dtype: str
    vocab: bool = False  # rows are re-indexed to the output vocabulary before merging


@dataclass(frozen=True)
class MergePlan:
    recipe: Recipe
    parents: tuple[Path, ...]  # index -> parent dir
    refs: tuple[str, ...]  # index -> recipe reference
    layouts: tuple[ModelLayout, ...]
    tensors: tuple[TensorPlan, ...]
    config_source: int  # parent whose config/tokenizer files are copied
    num_layers_out: int | None
    layer_key: str | None  # config key holding the layer count
    vocab: VocabPlan | None = None  # parents' tokenizers differ: rows mapped by token string


def _layer_prefix(names) -> str | None:
    counts = Counter(m.group(1) for n in names if (m := _LAYER_RE.match(n)))
    return counts.most_common(1)[0][0] if counts else None


def _split(name: str, prefix: str | None) -> tuple[int | None, str]:
    m = _LAYER_RE.match(name)
    if prefix is not None and m and m.group(1) == prefix:
        return int(m.group(2)), m.group(3)
    return None, name


def _num_layers(layout: ModelLayout, prefix: str | None) -> tuple[int, str | None]:
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(layout.config.get(key), int):
            return layout.config[key], key
    idx = [i for n in layout.tensors if (i := _split(n, prefix)[0]) is not None]
    return (max(idx) + 1 if idx else 0), None


def _check_dtypes(layout: ModelLayout, ref: ModelLayout) -> None:
    for name, (_, info) in layout.tensors.items():
        other = ref.tensors[name][1].dtype
        if (info.dtype in FLOAT_DTYPES) != (other in FLOAT_DTYPES) or (
            info.dtype not in FLOAT_DTYPES and info.dtype != other
        ):
            raise CompatibilityError(
                f"{layout.path}: tensor {name!r} has dtype {info.dtype}, {ref.path} has {other}; "
                "only floating-point tensors can differ in precision"
            )


def _promote(dtypes: list[str]) -> str:
    if len(set(dtypes)) == 1:
        return dtypes[0]
    if set(dtypes) == {"F16", "BF16"}:
        return "F32"  # torch.promote_types(float16, bfloat16)
    return max(dtypes, key=lambda d: _RANK[d])


def plan_merge(recipe: Recipe) -> MergePlan:
    method = recipe.method
    refs = recipe.input_refs()
    paths = [recipe.path_of(r) for r in refs]
    layouts = [read_layout(p) for p in paths]
    index = {r: i for i, r in enumerate(refs)}
    base = index.get(recipe.base_model) if recipe.base_model else None
    ref_index = base if base is not None else 0
    ref_layout = layouts[ref_index]
    prefix = _layer_prefix(ref_layout.tensors)
    source_index = index.get(recipe.tokenizer_source)
    vocab = _vocab_plan(recipe, paths, base, source_index)
    vocab_names = _vocab_tensors(ref_layout, prefix) if vocab else set()
    for lay in layouts:
        if lay is not ref_layout:
            _compare(ref_layout, lay, vocab_names)
            _check_dtypes(lay, ref_layout)

    # Normalise to slices of (source refs, layer ranges, params) as mergekit does.
    if recipe.models:
        n, _ = _num_layers(ref_layout, prefix)
        sources = [(m.model, (0, n), m.parameters) for m in recipe.models]
        if recipe.base_model and recipe.base_model not in [m.model for m in recipe.models]:
            sources.append((recipe.base_model, (0, n), None))
        slices = [(sources, recipe.base_model, None)]
    else:
        slices = [([(s.model, tuple(s.layer_range), s.parameters) for s in sl.sources],
                   sl.base_model or recipe.base_model, sl.parameters) for sl in recipe.slices]
    for srcs, _, _ in slices:
        for ref, (lo, hi), _ in srcs:
            n, _ = _num_layers(layouts[index[ref]], prefix)
            if hi > n:
                raise RecipeError(f"layer_range [{lo}, {hi}] of {ref} is out of bounds: it has {n} layers")
    _check_inputs(recipe, slices)

    plans: list[TensorPlan] = []
    # dict.fromkeys, not a set: set order follows the per-process string hash seed, and the tensor
    # order decides the shard bytes, so a set would make content ids differ between processes.
    layers = [_layer_tensors(lay, prefix) for lay in layouts]
    # Within a layer, tensors follow the reference's layer 0, then names first seen in later layers.
    order = {rest: k for k, rest in enumerate(dict.fromkeys(r for i in sorted(layers[ref_index]) for r in layers[ref_index][i]))}
    non_layer = [nm for nm in ref_layout.tensors if _split(nm, prefix)[0] is None]
    pre = [nm for nm in non_layer if any(h in nm for h in _PRE_HINTS)]
    post = [nm for nm in non_layer if nm not in pre]

    def add(out_name, srcs, slice_base, slice_params, in_names, t):
        models = [index[r] for r, _, _ in srcs]
        base_pos = next((j for j, (r, _, _) in enumerate(srcs) if r == slice_base), None)
        if method.base == "ignored":
            base_pos = None
        shared = {p.name: resolve(p, [slice_params, recipe.parameters], out_name, t, recipe.merge_method)
                  for p in method.params if p.scope == "shared"}
        if recipe.split is not None and len(plans) >= recipe.split.index:
            shared["t"] = 1 - shared["t"]  # the same expression as merge.evolve.crossover.tensor_ratios
        per_input = []
        for j, (r, _, params) in enumerate(srcs):
            per_input.append({
                p.name: resolve(p, [params, slice_params, recipe.parameters], in_names[j], t, r)
                for p in method.params
                if p.scope == "input" or (p.scope == "non_base" and j != base_pos)
            })
        dtypes = [layouts[m].dtype(nm) for m, nm in zip(models, in_names)]
        if dtypes[0] in FLOAT_DTYPES:
            compute = _ST_DTYPE[recipe.dtype] if recipe.dtype else _promote(dtypes)
            out = _ST_DTYPE[recipe.out_dtype] if recipe.out_dtype else compute
        else:
            compute, out = None, dtypes[0]
        shape = tuple(ref_layout.shape(in_names[0]))
        is_vocab = in_names[0] in vocab_names
        if is_vocab:
            shape = (vocab.size, *shape[1:])
        plans.append(TensorPlan(out_name, tuple(zip(models, in_names)), base_pos, t, shared, tuple(per_input),
                                shape, compute, out, is_vocab))

    first, last = slices[0], slices[-1]
    for nm in pre:
        add(nm, first[0], first[1], first[2], [nm] * len(first[0]), 0.0)
    out_layer = 0
    for srcs, slice_base, slice_params in slices:
        length = srcs[0][1][1] - srcs[0][1][0]
        for off in range(length):
            t = off / (length - 1) if length > 1 else 1.0
            for rest in _at_position(srcs, off, layers, index, paths, prefix, order):
                in_names = [f"{prefix}.{lr[0] + off}.{rest}" for _, lr, _ in srcs]
                add(f"{prefix}.{out_layer}.{rest}", srcs, slice_base, slice_params, in_names, t)
            out_layer += 1
    for nm in post:
        add(nm, last[0], last[1], last[2], [nm] * len(last[0]), 0.0)

    if recipe.split is not None and recipe.split.index > len(plans):
        raise RecipeError(f"split.index {recipe.split.index} is past the merge's {len(plans)} tensors")
    if method.statistics:
        _check_statistics(recipe, plans, refs)
    config_source = base if base is not None else index[slices[0][0][0][0]]
    if recipe.tokenizer_source not in (None, "base", "union"):
        config_source = index[recipe.tokenizer_source]
    _, key = _num_layers(ref_layout, prefix)
    return MergePlan(recipe, tuple(paths), tuple(refs), tuple(layouts), tuple(plans), config_source,
                     out_layer if prefix else None, key, vocab)


def _layer_tensors(layout: ModelLayout, prefix: str | None) -> dict[int, list[str]]:
    """Layer index -> the names after ``<prefix>.<i>.`` in that layer, in header order. Layers may
    hold different sets: dense first layers before MoE ones, T5's relative_attention_bias in block 0."""
    out: dict[int, list[str]] = {}
    for name in layout.tensors:
        i, rest = _split(name, prefix)
        if i is not None:
            out.setdefault(i, []).append(rest)
    return out


def _at_position(srcs, off: int, layers, index, paths, prefix: str, order: dict[str, int]) -> list[str]:
    """The tensors of output layer ``off`` of a slice: those every source holds at its layer
    ``start + off``. One that some source lacks there cannot be merged: CompatibilityError."""
    held = [(ref, lr[0] + off, set(layers[index[ref]].get(lr[0] + off, ()))) for ref, lr, _ in srcs]
    union = set().union(*(names for _, _, names in held))
    for ref, i, names in held:
        lacking = sorted(union - names, key=lambda r: order.get(r, len(order)))
        if lacking:
            have_ref, have_i, _ = next(h for h in held if lacking[0] in h[2])
            raise CompatibilityError(
                f"{paths[index[ref]]}: tensor {f'{prefix}.{i}.{lacking[0]}'!r} is missing, but "
                f"{paths[index[have_ref]]} has {f'{prefix}.{have_i}.{lacking[0]}'!r} at the same position; "
                "choose layer ranges whose layers hold the same tensors"
            )
    return sorted(union, key=lambda r: (order.get(r, len(order)), r))


def _check_inputs(recipe: Recipe, slices) -> None:
    m = recipe.method
    for i, (srcs, slice_base, _) in enumerate(slices):
        names = [r for r, _, _ in srcs]
        where = f"{m.name} (slice {i})" if recipe.slices else m.name
        has_base = slice_base is not None and slice_base in names and m.base != "ignored"
        if m.base == "required" and not has_base:
            raise RecipeError(f"{where} needs base_model set to one of its models")
        if len(set(names)) != len(names):
            raise RecipeError(f"{where}: a model is listed twice")
        non_base = len(names) - int(has_base)
        if len(names) < m.min_inputs or (m.max_inputs and len(names) > m.max_inputs):
            want = f"{m.min_inputs}" + (f"..{m.max_inputs}" if m.max_inputs != m.min_inputs else "")
            raise RecipeError(f"{where} takes {want} models (base included), got {len(names)}")
        if (m.min_non_base and non_base < m.min_non_base) or (m.max_non_base and non_base > m.max_non_base):
            raise RecipeError(f"{where} takes {m.min_non_base}..{m.max_non_base or 'any'} non-base models, got {non_base}")


def _vocab_plan(recipe: Recipe, paths: list[Path], base: int | None, source_index: int | None) -> VocabPlan | None:
    prints = {p: tokenizer_fingerprint(p) for p in paths}
    if len(set(prints.values())) == 1:
        return None  # one vocabulary: rows already line up
    if recipe.tokenizer_source is None:
        first = paths[0]
        other = next(p for p in paths if prints[p] != prints[first])
        raise CompatibilityError(
            f"{other}: tokenizer differs from {first}'s; set tokenizer_source (base, union or a model) "
            "to map embedding rows by token string"
        )
    return plan_vocab(recipe.tokenizer_source, paths, base, source_index)


def _vocab_tensors(layout: ModelLayout, prefix: str | None) -> set[str]:
    """Non-layer 2-D tensors with one row per token (embeddings, LM head)."""
    size = layout.config.get("vocab_size")
    return {n for n, (_, info) in layout.tensors.items()
            if _split(n, prefix)[0] is None and len(info.shape) == 2 and info.shape[0] == size}


def _compare(ref: ModelLayout, other: ModelLayout, vocab_names: set[str]) -> None:
    """``compare_layouts``, except that vocabulary tensors may differ in their row count."""
    if not vocab_names:
        return compare_layouts(ref, other)
    size = other.config.get("vocab_size")
    for name in vocab_names:
        if name in other.tensors and other.shape(name)[1:] == ref.shape(name)[1:] and other.shape(name)[0] == size:
            continue
        if name in other.tensors:
            raise CompatibilityError(f"{other.path}: tensor {name!r} has shape {list(other.shape(name))}, "
                                     f"expected [{size}, {', '.join(map(str, ref.shape(name)[1:]))}]")
    trimmed = ModelLayout(other.path, {**other.config, "model_type": other.model_type},
                          other.shards, {n: v for n, v in other.tensors.items() if n not in vocab_names})
    reference = ModelLayout(ref.path, ref.config, ref.shards, {n: v for n, v in ref.tensors.items() if n not in vocab_names})
    compare_layouts(reference, trimmed)
    missing = sorted(vocab_names - set(other.tensors))
    if missing:
        raise CompatibilityError(f"{other.path}: tensor {missing[0]!r} of {ref.path} is missing")


def _check_statistics(recipe: Recipe, plans: list[TensorPlan], refs: list[str]) -> None:
    headers: dict[str, Any] = {}
    for tp in plans:
        if tp.compute_dtype is None:
            continue
        for (parent, name), params in zip(tp.inputs, tp.per_input):
            path = recipe.path_of(params["statistics"])
            if str(path) not in headers:
                if not path.is_file():
                    raise RecipeError(f"{refs[parent]}: statistics file {path} not found (see `mergeops calibrate`)")
                headers[str(path)] = read_header(path)
            info = headers[str(path)].tensors.get(name)
            want = tp.shape if recipe.method.statistics == "fisher" else (tp.shape[-1], tp.shape[-1])
            if recipe.method.statistics == "fisher" and info is None:
                raise FormatError(f"{path}: no Fisher statistics for tensor {name!r} of {refs[parent]}")
            if info is not None and tuple(info.shape) != want:
                raise FormatError(f"{path}: statistics for {name!r} have shape {list(info.shape)}, expected {list(want)}")
