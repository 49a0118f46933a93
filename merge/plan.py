"""Plan a merge from headers only: which input tensors make each output tensor, with which
parameters, dtypes and shapes. Every problem is raised here, before a single weight is read.

Architecture-agnostic: layer stacks and the roles of the other tensors are inferred from names
and config.json (``merge.structure``). A `models:` recipe merges every stack over its full range,
``t`` for gradients being the layer's position in its own stack; `slices:` re-index the one stack
the way mergekit does (``t``: the position within the slice), and what slicing cannot do right is
refused here. Tensors outside the stacks get ``t = 0``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merge.align import AlignSpec, infer_spec
from merge.errors import CompatibilityError, FormatError, RecipeError
from merge.layout import ModelLayout, compare_layouts, read_layout, tokenizer_fingerprint
from merge.params import resolve
from merge.recipe import Recipe
from merge.safetensors_header import read_header
from merge.structure import Structure, check_slices, infer_structure, role, sliced_config
from merge.vocab import VocabPlan, plan_vocab

FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
_ST_DTYPE = {v: k for k, v in FLOAT_DTYPES.items()}
_RANK = {"F16": 1, "BF16": 1, "F32": 2, "F64": 3}


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
    config: dict  # its config.json with layer counts and per-layer lists set for the output
    vocab: VocabPlan | None = None  # parents' tokenizers differ: rows mapped by token string
    align: AlignSpec | None = None  # recipe `align`: how every other parent's units are permuted
    reference: int = 0  # parent the others are aligned to (the base, else the first model)


def _stack_count(layout: ModelLayout, structure: Structure, prefix: str) -> int:
    idx = [loc[1] for n in layout.tensors if (loc := structure.locate(n)) and loc[0] == prefix]
    return max(idx) + 1 if idx else 0


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
    structure = infer_structure(ref_layout.tensors, ref_layout.config)
    source_index = index.get(recipe.tokenizer_source)
    vocab = _vocab_plan(recipe, paths, base, source_index)
    vocab_names = _vocab_tensors(ref_layout, structure) if vocab else set()
    for lay in layouts:
        if lay is not ref_layout:
            _compare(ref_layout, lay, vocab_names)
            _check_dtypes(lay, ref_layout)

    # Normalise to segments (stack, sources with layer ranges, slice base, slice params) as
    # mergekit does per module: a `models:` recipe is one full-range segment per layer stack, each
    # with its own gradient positions; `slices:` re-index the one stack.
    if recipe.models:
        entries = [(m.model, m.parameters) for m in recipe.models]
        if recipe.base_model and recipe.base_model not in [m.model for m in recipe.models]:
            entries.append((recipe.base_model, None))
        whole = ([(r, (0, 0), p) for r, p in entries], recipe.base_model, None)
        segments = [(s.prefix, [(r, (0, s.count), p) for r, p in entries], recipe.base_model, None)
                    for s in structure.stacks]
        first = last = whole
    else:
        slices = [([(s.model, tuple(s.layer_range), s.parameters) for s in sl.sources],
                   sl.base_model or recipe.base_model, sl.parameters) for sl in recipe.slices]
        prefix = structure.stacks[0].prefix if len(structure.stacks) == 1 else None
        segments = [(prefix, *sl) for sl in slices]
        first, last = slices[0], slices[-1]
    _check_inputs(recipe, [seg[1:] for seg in segments] or [first])

    plans: list[TensorPlan] = []
    # dict.fromkeys, not a set: set order follows the per-process string hash seed, and the tensor
    # order decides the shard bytes, so a set would make content ids differ between processes.
    layers = [_layer_tensors(lay, structure) for lay in layouts]
    non_layer = [nm for nm in ref_layout.tensors if structure.locate(nm) is None]
    pre = [nm for nm in non_layer if role(nm) == "pre"]
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

    out_config = None
    config_source = base if base is not None else index[first[0][0][0]]
    if recipe.tokenizer_source not in (None, "base", "union"):
        config_source = index[recipe.tokenizer_source]
    if recipe.slices:
        out_config = _plan_slices(recipe, structure, layouts, layers, index, segments, post,
                                  first, last, config_source)
    for nm in pre:
        add(nm, first[0], first[1], first[2], [nm] * len(first[0]), 0.0)
    out_layers: Counter = Counter()
    for prefix, srcs, slice_base, slice_params in segments:
        order = _order(layers[ref_index].get(prefix, {}))
        length = srcs[0][1][1] - srcs[0][1][0]
        for off in range(length):
            t = off / (length - 1) if length > 1 else 1.0
            for rest in _at_position(srcs, off, layers, index, paths, prefix, order):
                in_names = [f"{prefix}.{lr[0] + off}.{rest}" for _, lr, _ in srcs]
                add(f"{prefix}.{out_layers[prefix]}.{rest}", srcs, slice_base, slice_params, in_names, t)
            out_layers[prefix] += 1
    for nm in post:
        add(nm, last[0], last[1], last[2], [nm] * len(last[0]), 0.0)

    if recipe.split is not None and recipe.split.index > len(plans):
        raise RecipeError(f"split.index {recipe.split.index} is past the merge's {len(plans)} tensors")
    if method.statistics:
        _check_statistics(recipe, plans, refs)
    if out_config is None:
        out_config = dict(layouts[config_source].config)
    align = None
    if recipe.align:
        if vocab is not None:
            raise CompatibilityError("align: weight_matching needs parents with the same tokenizer; "
                                     "their embedding rows would first have to be re-indexed")
        align = infer_spec({n: tuple(ref_layout.shape(n)) for n in ref_layout.tensors}, ref_layout.config,
                           structure, recipe.align_residual)
    return MergePlan(recipe, tuple(paths), tuple(refs), tuple(layouts), tuple(plans), config_source,
                     out_config, vocab, align, ref_index)


def _order(stack_layers: dict[int, list[str]]) -> dict[str, int]:
    """Within a layer, tensors follow the reference's layer 0, then names first seen in later layers."""
    return {rest: k for k, rest in enumerate(dict.fromkeys(r for i in sorted(stack_layers) for r in stack_layers[i]))}


def _plan_slices(recipe, structure, layouts, layers, index, segments, post, first, last, config_source) -> dict:
    """Check a slices recipe against the model's structure (headers and configs only) and return
    the output config with its layer counts and per-layer lists re-indexed."""
    if len(structure.stacks) == 1:
        stack = structure.stacks[0]
        for prefix, srcs, _, _ in segments:
            for ref, (lo, hi), _ in srcs:
                n = _stack_count(layouts[index[ref]], structure, prefix)
                if hi > n:
                    raise RecipeError(f"layer_range [{lo}, {hi}] of {ref} is out of bounds: it has {n} layers")
    same_ends = ([(r, p) for r, _, p in first[0]], first[1], first[2]) == ([(r, p) for r, _, p in last[0]], last[1], last[2])
    unknown = [] if same_ends else [nm for nm in post if role(nm) is None]
    # The layers a slice takes, by the first source of each slice (all sources of a slice hold the same tensors).
    mapping = [(index[srcs[0][0]], srcs[0][1][0] + off) for _, srcs, _, _ in segments
               for off in range(srcs[0][1][1] - srcs[0][1][0])]
    prefix = segments[0][0]
    sets = [{i: frozenset((rest, lay.shape(f"{prefix}.{i}.{rest}")) for rest in names)
             for i, names in layers[k].get(prefix, {}).items()} for k, lay in enumerate(layouts)]
    check_slices(structure, sets, mapping, config_source, unknown)
    return sliced_config(layouts[config_source].config, [lay.config for lay in layouts], structure.stacks[0], mapping)


def _layer_tensors(layout: ModelLayout, structure: Structure) -> dict[str, dict[int, list[str]]]:
    """Stack prefix -> layer index -> the names after ``<prefix>.<i>.`` in that layer, in header
    order. Layers may hold different sets: dense first layers before MoE ones, T5's
    relative_attention_bias in block 0."""
    out: dict[str, dict[int, list[str]]] = {}
    for name in layout.tensors:
        loc = structure.locate(name)
        if loc is not None:
            out.setdefault(loc[0], {}).setdefault(loc[1], []).append(loc[2])
    return out


def _at_position(srcs, off: int, layers, index, paths, prefix: str, order: dict[str, int]) -> list[str]:
    """The tensors of output layer ``off`` of a slice: those every source holds at its layer
    ``start + off``. One that some source lacks there cannot be merged: CompatibilityError."""
    held = [(ref, lr[0] + off, set(layers[index[ref]].get(prefix, {}).get(lr[0] + off, ()))) for ref, lr, _ in srcs]
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


def _vocab_tensors(layout: ModelLayout, structure: Structure) -> set[str]:
    """Non-layer 2-D tensors with one row per token (embeddings, LM head)."""
    size = layout.config.get("vocab_size")
    return {n for n, (_, info) in layout.tensors.items()
            if structure.locate(n) is None and len(info.shape) == 2 and info.shape[0] == size}


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
            if "statistics" not in params:
                continue  # the base of a regmean: no input of the least squares
            path = recipe.path_of(params["statistics"])
            if str(path) not in headers:
                if not path.is_file():
                    raise RecipeError(f"{refs[parent]}: statistics file {path} not found (see `mergeops calibrate`)")
                headers[str(path)] = read_header(path)
            info = headers[str(path)].tensors.get(name)
            want = tp.shape if recipe.method.statistics == "fisher" else (tp.shape[-1], tp.shape[-1])
            if recipe.method.statistics == "fisher" and info is None:
                raise FormatError(f"{path}: no Fisher statistics for tensor {name!r} of {refs[parent]}")
            sequential = (2, *want) if recipe.method.statistics == "gram" else None  # [Gram, cross-Gram]
            if info is not None and tuple(info.shape) not in (want, sequential):
                raise FormatError(f"{path}: statistics for {name!r} have shape {list(info.shape)}, expected {list(want)}")
