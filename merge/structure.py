"""A model's structure inferred from tensor names and config.json: layer stacks and tensor roles.

No definition file per architecture: a **layer stack** is a family of names ``<prefix>.<i>.<rest>``
(the first integer in the name) whose indices run 0..n-1 and whose size n is a layer count in
the config (``num_hidden_layers``, ``n_layer``, ``num_decoder_layers``, ``depth``, … at any
depth, ``text_config``/``vision_config`` included). A model may have several: T5's
``encoder.block`` and ``decoder.block``, CLIP's text and vision towers. Without any config match
the largest family is the stack, as before. Layers of one stack may hold different tensors (T5's
``relative_attention_bias`` in block 0 only, dense layers before MoE ones).

Roles of the tensors outside the stacks decide, for slices, which slice they come from: input
embeddings from the first, final norms and heads from the last. They are read from the name's
parts, not substrings, so GPT-NeoX's ``embed_out`` is a head and BERT's ``embeddings.LayerNorm``
an embedding part.

Slicing (``slices:``) re-indexes one stack; ``check_slices`` refuses what cannot come out right
(several stacks, no config field for the layer count, layers that hold different tensors moved to
positions the config describes otherwise, a tensor of unknown role that first and last slices
would supply differently), and ``sliced_config`` updates every layer-count field and per-layer
list (``layer_types``, ``mlp_only_layers``, …) of the output config.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from dataclasses import dataclass

from merge.errors import CompatibilityError

_INDEXED = re.compile(r"^(.*?)\.(\d+)\.(.+)$")
_COUNT_KEY = re.compile(r"^(?:(?:num|n)_(?:[a-z]+_)?(?:layers?|blocks?)|(?:encoder|decoder)_layers|depth|layers)$")
# A config list with one entry per layer (remapped by position) or of layer indices (by membership).
_PER_LAYER_KEY = re.compile(r"(layer|block)|_types$")
_HEAD = {"lm_head", "embed_out", "output", "output_layer", "head", "heads", "cls", "classifier", "score",
         "pooler", "qa_outputs", "proj_out", "logits"}
_PRE = {"wte", "wpe", "shared", "pre_layrnorm", "pre_layernorm", "cls_token", "mask_token", "pos_embed"}
_FINAL_NORM = {"norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm", "ln_out",
               "post_layernorm", "layernorm", "layer_norm"}


@dataclass(frozen=True)
class Stack:
    prefix: str
    count: int
    config_keys: tuple[tuple[str, ...], ...]  # config paths holding this count (last item: the key)


@dataclass(frozen=True)
class Structure:
    stacks: tuple[Stack, ...]
    architecture: str  # for messages: config "architectures"[0], else model_type

    def locate(self, name: str) -> tuple[str, int, str] | None:
        """(stack prefix, layer index, rest of the name), or None outside every stack."""
        m = _INDEXED.match(name)
        if m and any(s.prefix == m.group(1) for s in self.stacks):
            return m.group(1), int(m.group(2)), m.group(3)
        return None


def architecture_name(config: dict) -> str:
    archs = config.get("architectures")
    if isinstance(archs, list) and archs and isinstance(archs[0], str):
        return archs[0]
    return str(config.get("model_type") or "this model")


def _count_keys(config: dict, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], int]]:
    out = []
    for key, value in config.items():
        if isinstance(value, dict):
            out += _count_keys(value, (*path, key))
        elif isinstance(value, int) and not isinstance(value, bool) and _COUNT_KEY.match(key):
            out.append(((*path, key), value))
    return out


def infer_structure(names, config: dict) -> Structure:
    families: dict[str, set[int]] = {}
    sizes: Counter = Counter()
    for name in names:
        m = _INDEXED.match(name)
        if m:
            families.setdefault(m.group(1), set()).add(int(m.group(2)))
            sizes[m.group(1)] += 1
    counts = _count_keys(config)
    stacks = []
    for prefix in sorted(families):
        n = len(families[prefix])
        keys = tuple(path for path, value in counts if value == n)
        if keys and families[prefix] == set(range(n)):
            stacks.append(Stack(prefix, n, keys))
    if not stacks and sizes:  # no config field names a count: the largest family, as mergekit's own guess
        prefix = sizes.most_common(1)[0][0]
        stacks.append(Stack(prefix, max(families[prefix]) + 1, ()))
    return Structure(tuple(stacks), architecture_name(config))


def role(name: str) -> str | None:
    """'pre' (before the layers: embeddings), 'post' (after: final norm, head), or None."""
    parts = name.split(".")[:-1] or name.split(".")
    if any(p in _HEAD or p.endswith(("_head", "_predictions", "_projector")) or p.startswith("vocab_") for p in parts):
        return "post"  # heads: lm_head, embed_out, ELECTRA's generator_predictions, DistilBERT's vocab_projector
    if any("embed" in p.lower() or p in _PRE for p in parts):
        return "pre"
    if any(p in _FINAL_NORM for p in parts):
        return "post"
    return None


def _get(config: dict, path: tuple[str, ...]):
    for key in path:
        config = config.get(key) if isinstance(config, dict) else None
    return config


def _per_layer_lists(config: dict, path: tuple[str, ...], n: int) -> dict[str, str]:
    """Keys beside a layer-count key that describe layers: 'position' (one entry per layer) or
    'index' (a sorted list of distinct layer indices)."""
    holder = _get(config, path[:-1])
    out = {}
    for key, value in (holder or {}).items():
        if not isinstance(value, list) or not _PER_LAYER_KEY.search(key) or key == path[-1]:
            continue
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        if ints and value == sorted(set(value)) and all(0 <= v < n for v in value) and key.endswith(("_layers", "_idxs", "_indices")):
            out[key] = "index"
        elif len(value) == n:
            out[key] = "position"
    return out


def check_slices(structure: Structure, layer_sets, mapping: list[tuple[int, int]], config_source: int,
                 unknown_differs: list[str]) -> None:
    """Refuse a slices recipe that cannot give a right model, before any weight is read.

    ``layer_sets[parent][i]``: the (name, shape) set of layer ``i`` of the one stack;
    ``mapping[j]``: (parent, layer) that output layer ``j`` comes from;
    ``unknown_differs``: non-layer tensors of unknown role that the first and last slice supply differently.
    """
    arch = structure.architecture
    if len(structure.stacks) != 1:
        found = ", ".join(f"{s.prefix} [{s.count}]" for s in structure.stacks) or "none"
        raise CompatibilityError(
            f"{arch}: slices need exactly one layer stack, this model has {len(structure.stacks)} layer stacks "
            f"({found}); merge it with `models:` (per-stack slices, mergekit's `modules:`, are not supported)")
    stack = structure.stacks[0]
    if not stack.config_keys:
        raise CompatibilityError(f"{arch}: no config field holds the layer count of {stack.prefix} "
                                 f"({stack.count} layers), so slices could not update it; merge with `models:`")
    if unknown_differs:
        raise CompatibilityError(
            f"{arch}: cannot tell whether tensor {unknown_differs[0]!r} belongs before or after the layers, and the "
            "first and last slices would take it from different models or parameters; make them use the same")
    kinds = {layer_sets[p][i] for p, i in mapping} | set(layer_sets[config_source].values())
    if len(kinds) > 1:
        ref = layer_sets[config_source]
        for j, (p, i) in enumerate(mapping):
            if j not in ref or layer_sets[p][i] != ref[j]:
                raise CompatibilityError(
                    f"{arch}: layers of {stack.prefix} hold different tensors (dense and MoE layers, block-0-only "
                    f"tensors), and output layer {j} (layer {i} of its source) would not hold what layer {j} of the "
                    "config's model holds; choose slices that keep each kind of layer at its position")


def sliced_config(config: dict, configs: list[dict], stack: Stack, mapping: list[tuple[int, int]]) -> dict:
    """The output config: every layer-count field of the stack set to the output's count, and
    per-layer lists beside it re-indexed from each output layer's own parent."""
    out = copy.deepcopy(config)
    n_out = len(mapping)
    for path in stack.config_keys:
        holder = _get(out, path[:-1])
        for key, kind in _per_layer_lists(config, path, stack.count).items():
            sources = [_get(configs[p], (*path[:-1], key)) for p, _ in mapping]
            if kind == "position":
                holder[key] = [src[i] if isinstance(src, list) and i < len(src) else _missing(key) for src, (_, i) in zip(sources, mapping)]
            else:
                holder[key] = [j for j, (src, (_, i)) in enumerate(zip(sources, mapping)) if isinstance(src, list) and i in src]
        holder[path[-1]] = n_out
    return out


def _missing(key: str):
    raise CompatibilityError(f"config field {key!r} differs in length between the parents; cannot re-index it")
