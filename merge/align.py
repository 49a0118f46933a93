"""Permutation alignment of parents trained from different initialisations: Git Re-Basin weight
matching (Ainsworth, Hayase, Srinivasa, ICLR 2023, https://arxiv.org/abs/2209.04836).

Two networks trained from different seeds hold their hidden units in unrelated orders, so a plain
average mixes unrelated units. Permuting a model's hidden units, together with the weights that
read and write them, leaves its function unchanged; each other parent is permuted to resemble the
reference (the base, else the first model) before the merge.

Permutation groups, inferred from tensor names and config.json (no definition file):
- per layer, the MLP hidden units: rows of ``gate_proj``/``up_proj`` (and biases), columns of
  ``down_proj``;
- per layer, attention heads, moved as key/value groups: a kv head with its
  ``num_attention_heads / num_key_value_heads`` query heads (rows of q/k/v and their biases, columns
  of ``o_proj``, q/k norms over all heads). RoPE and softmax act within a head, so whole heads move;
- optionally (``align_residual: true``) the residual stream: columns of every matrix that
  reads it (embeddings, q/k/v, gate/up, the head), rows of those that write it (``o_proj``,
  ``down_proj``) and every norm's weight and bias (RMSNorm and LayerNorm statistics do not depend on
  the order of the features).
Fused projections (GPT-2, GPT-NeoX, Falcon, Phi-3), MoE routers and experts, several layer stacks
and anything else are refused before a weight is read: a wrong guess would be silently wrong.

Weight matching maximises sum_tensors <W_ref, P(W_other)> by coordinate ascent, one group at a
time, each a linear assignment problem (scipy's ``linear_sum_assignment``). Streaming: a pass reads
one layer of both parents at a time, solves that layer's groups given the residual permutation and
adds the layer's share of the residual's d x d cost; tensors outside the layers add a constant
share computed once. Passes repeat until none changes a permutation (at most ``MAX_PASSES``).
Costs are float64 sums computed on one thread, so the permutations are the same run after run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from merge.errors import CompatibilityError
from merge.structure import Structure, role

RESIDUAL = "residual"
# The paper's weight matching converges in a few passes; the bound keeps a cycle between equally
# good assignments (ties) from running forever.
MAX_PASSES = 30
_HEAD_PROJ = {"q_proj": ("q", 0), "k_proj": ("kv", 0), "v_proj": ("kv", 0), "o_proj": ("q", 1)}
_MLP_PROJ = {"gate_proj": 0, "up_proj": 0, "down_proj": 1}
_SUPPORTED = ("supported: separate q/k/v/o_proj, gate/up/down_proj and norms in one layer stack, "
              "as in Llama, Mistral, Qwen2/3, Gemma2/3, OLMo2")


@dataclass(frozen=True)
class Axis:
    dim: int
    group: str  # RESIDUAL, "<layer>.<module path>:heads" or "<layer>.<module path>:mlp"
    block: int = 1  # consecutive entries that move together (a kv group's rows)


@dataclass(frozen=True)
class AlignSpec:
    residual: bool
    sizes: dict[str, int]  # group -> number of units permuted
    axes: dict[str, tuple[Axis, ...]]  # tensor name -> its permuted axes (absent: left as it is)
    layers: tuple[tuple[str, ...], ...]  # tensor names of each layer: the streaming unit
    outside: tuple[str, ...]  # tensors outside the layers that touch the residual stream


def infer_spec(shapes: dict[str, tuple[int, ...]], config: dict, structure: Structure, residual: bool) -> AlignSpec:
    """The permutation groups of a model from its tensor shapes and config; refuses in one line."""
    arch = structure.architecture

    def refuse(why: str):
        raise CompatibilityError(f"{arch}: align: weight_matching: {why}")

    if len(structure.stacks) != 1:
        refuse(f"{len(structure.stacks)} layer stacks; only models with one stack of decoder layers can be "
               f"aligned ({_SUPPORTED})")
    d, heads = config.get("hidden_size"), config.get("num_attention_heads")
    if not isinstance(d, int) or not isinstance(heads, int) or heads < 1:
        refuse(f"config.json has no hidden_size and num_attention_heads at its top level ({_SUPPORTED})")
    kv = config.get("num_key_value_heads") or heads
    hd = config.get("head_dim") or d // heads
    if not isinstance(kv, int) or not isinstance(hd, int) or heads % kv:
        refuse(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
    qblock = heads // kv * hd  # rows of q per kv group
    sizes: dict[str, int] = {RESIDUAL: d} if residual else {}
    axes: dict[str, tuple[Axis, ...]] = {}
    layers: dict[int, list[str]] = {}
    members: dict[str, set[str]] = {}  # group -> projections seen
    for name, shape in shapes.items():
        loc = structure.locate(name)
        if loc is None:
            continue
        prefix, i, rest = loc
        layers.setdefault(i, []).append(name)
        parts = rest.split(".")
        if len(parts) < 2 or parts[-1] not in ("weight", "bias"):
            refuse(f"cannot tell how {name!r} moves when hidden units are permuted ({_SUPPORTED})")
        module, leaf, path = parts[-2], parts[-1], ".".join(parts[:-2])
        res = (Axis(0, RESIDUAL),) if residual else ()
        if module in _HEAD_PROJ:
            kind, dim = _HEAD_PROJ[module]
            group, block = f"{prefix}.{i}.{path}:heads", qblock if kind == "q" else hd
            units = heads * hd if kind == "q" else kv * hd
            want = (units, d) if dim == 0 else (d, units)
            got = axes_for(shape, leaf, dim, Axis(dim, group, block), residual, want, units if dim == 0 else d)
            if got is None:
                refuse(f"{name!r} has shape {list(shape)}, expected {list(want if leaf == 'weight' else want[:1])} "
                       f"from hidden_size {d}, {heads} heads of {hd} ({kv} key/value heads)")
            axes[name] = got
            sizes[group] = kv
            members.setdefault(group, set()).add(module)
        elif module in _MLP_PROJ:
            dim = _MLP_PROJ[module]
            group = f"{prefix}.{i}.{path}:mlp"
            up = shapes.get(f"{prefix}.{i}.{path + '.' if path else ''}up_proj.weight", ())
            if len(up) != 2:  # hidden units are up_proj's rows; fused gate_up_proj (Phi-3) has none
                refuse(f"cannot tell how {name!r} moves: no up_proj beside it ({_SUPPORTED})")
            ff = up[0]
            want = (ff, d) if dim == 0 else (d, ff)
            got = axes_for(shape, leaf, dim, Axis(dim, group), residual, want, ff if dim == 0 else d)
            if got is None:
                refuse(f"{name!r} has shape {list(shape)}, which does not fit hidden_size {d} and the other "
                       "MLP projections of its layer")
            axes[name] = got
            sizes[group] = ff
            members.setdefault(group, set()).add(module)
        elif "norm" in module and len(shape) == 1:
            if module.startswith(("q_", "k_")):  # q_norm/k_norm: per head (shared) or over all heads
                group, n_heads = f"{prefix}.{i}.{path}:heads", heads if module.startswith("q_") else kv
                if shape[0] == n_heads * hd and n_heads * hd != hd:
                    axes[name] = (Axis(0, group, qblock if module.startswith("q_") else hd),)
                elif shape[0] != hd:
                    refuse(f"{name!r} has {shape[0]} entries: neither one head ({hd}) nor all heads ({n_heads * hd})")
            elif shape[0] == d:
                axes[name] = res
            else:
                refuse(f"{name!r} has {shape[0]} entries, not hidden_size {d}")
        else:
            refuse(f"cannot tell how {name!r} moves when hidden units are permuted ({_SUPPORTED})")
    for group, seen in members.items():
        need = {"q_proj", "k_proj", "v_proj", "o_proj"} if group.endswith(":heads") else {"up_proj", "down_proj"}
        if not need <= seen:
            refuse(f"{group.split(':')[0]} lacks {', '.join(sorted(need - seen))}")
    outside = []
    if residual:
        for name, shape in shapes.items():
            if structure.locate(name) is not None:
                continue
            where = role(name)
            if where and len(shape) == 2 and shape[1] == d and shape[0] != d:
                axes[name] = (Axis(1, RESIDUAL),)  # embeddings and heads: [rows, d]
            elif where and len(shape) == 1 and shape[0] == d:
                axes[name] = (Axis(0, RESIDUAL),)  # final norm, embedding norm
            elif not (where == "post" and len(shape) == 1):  # a head's bias does not see the residual
                refuse(f"cannot tell how {name!r} (shape {list(shape)}) reads or writes the residual stream; "
                       "use align_residual: false to align heads and MLP units only")
            else:
                continue
            outside.append(name)
    return AlignSpec(residual, sizes, axes, tuple(tuple(layers[i]) for i in sorted(layers)), tuple(outside))


def axes_for(shape, leaf: str, dim: int, unit: Axis, residual: bool, want: tuple[int, int], bias_len: int):
    """A projection's permuted axes: its unit axis and (with ``residual``) the other one; None when
    the shape does not fit. A bias follows the output rows: units for q/k/v/gate/up, residual for o/down."""
    if leaf == "weight":
        if tuple(shape) != want:
            return None
        return (unit, Axis(1 - dim, RESIDUAL)) if residual else (unit,)
    if tuple(shape) != (bias_len,):
        return None
    if dim == 0:
        return (Axis(0, unit.group, unit.block),)
    return (Axis(0, RESIDUAL),) if residual else ()


def _index(perm: torch.Tensor, block: int) -> torch.Tensor:
    if block == 1:
        return perm
    return (perm[:, None] * block + torch.arange(block)).reshape(-1)


def permute(tensor: torch.Tensor, axes, perms: dict[str, torch.Tensor]) -> torch.Tensor:
    """``tensor`` with each axis re-ordered by its group's permutation (pure indexing: exact)."""
    for ax in axes:
        if ax.group in perms:
            tensor = tensor.index_select(ax.dim, _index(perms[ax.group], ax.block))
    return tensor


def _cost(a: torch.Tensor, b: torch.Tensor, axes, group: str, perms) -> torch.Tensor:
    """[n, n] inner products between unit i of ``a`` and unit j of ``b`` (its other axes permuted)."""
    ax = next(x for x in axes if x.group == group)
    b = permute(b, [x for x in axes if x.group != group], perms)
    n = a.shape[ax.dim] // ax.block
    a2 = a.movedim(ax.dim, 0).reshape(n, -1).double()
    b2 = b.movedim(ax.dim, 0).reshape(n, -1).double()
    return a2 @ b2.T


def _solve(cost: torch.Tensor) -> torch.Tensor:
    from scipy.optimize import linear_sum_assignment  # imported here: `mergeops --help` stays fast

    _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
    return torch.from_numpy(cols).long()


Reader = Callable[[str], torch.Tensor]


def weight_matching(spec: AlignSpec, read_ref: Reader, read_other: Reader,
                    max_passes: int = MAX_PASSES) -> tuple[dict[str, torch.Tensor], int]:
    """Permutations of the other model (``other.index_select(dim, perm)`` lines unit i up with the
    reference's unit i) and the passes it took."""
    perms = {g: torch.arange(n) for g, n in spec.sizes.items()}
    fixed = None
    if spec.residual:
        fixed = torch.zeros(spec.sizes[RESIDUAL], spec.sizes[RESIDUAL], dtype=torch.float64)
        for name in spec.outside:
            fixed += _cost(read_ref(name), read_other(name), spec.axes[name], RESIDUAL, perms)
    for passes in range(1, max_passes + 1):
        changed = False
        res_cost = fixed.clone() if fixed is not None else None
        for names in spec.layers:
            a = {n: read_ref(n) for n in names if spec.axes.get(n)}
            b = {n: read_other(n) for n in a}
            groups = dict.fromkeys(x.group for n in a for x in spec.axes[n] if x.group != RESIDUAL)
            for group in groups:
                cost = sum(_cost(a[n], b[n], spec.axes[n], group, perms) for n in a
                           if any(x.group == group for x in spec.axes[n]))
                perm = _solve(cost)
                changed |= not torch.equal(perm, perms[group])
                perms[group] = perm
            if res_cost is not None:
                for n in a:
                    if any(x.group == RESIDUAL for x in spec.axes[n]):
                        res_cost += _cost(a[n], b[n], spec.axes[n], RESIDUAL, perms)
        if res_cost is not None:
            perm = _solve(res_cost)
            changed |= not torch.equal(perm, perms[RESIDUAL])
            perms[RESIDUAL] = perm
        if not changed or res_cost is None:  # without the residual, layers do not depend on each other
            break
    return perms, passes
