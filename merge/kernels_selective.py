"""Selective merge kernels: which entries of each task vector (child - base) survive, and with
what weight. SCE, NearSwap, Arcee Fusion, RAM and RAM+ (tensor-local).

Like ``merge.kernels``, each follows the operation order and working dtypes of the mergekit 0.1.5
method of the same name, so the same inputs give the same bits: where mergekit mixes dtypes
(a float32 mask times bfloat16 deltas) the result is float32 here too, and the caller casts it to
``out_dtype``. Expressions are kept in mergekit's form where the form decides the bits: torch
computes ``t / x`` as ``x.reciprocal() * t``, not as one division. Paper links live in the method
table (``merge.methods``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

# Arcee Fusion's quartiles come from a sorted sample of this many entries (drawn with replacement)
# on larger tensors, as in mergekit: sorting a whole embedding would cost its size in int64 indices.
QUANTILE_SAMPLE = 1_000_000


def _task_vectors(base: torch.Tensor, others: Sequence[torch.Tensor]) -> torch.Tensor:
    """[n, *shape]: each child minus the base, in the working dtype."""
    return torch.stack(list(others)).sub_(base)


def sce(base: torch.Tensor, others: Sequence[torch.Tensor], select_topk: float = 1.0) -> torch.Tensor:
    """SCE: Select the ``select_topk`` fraction of positions whose deltas vary most across the
    children, Calculate each child's weight as its mean squared delta (normalised to sum 1), Erase
    the entries whose sign disagrees with the elected one (TIES' sign of the summed deltas), and
    add the weighted mean of what is left to the base."""
    if not others:
        return base
    if base.numel() == 0:
        return base.clone()
    n = len(others)
    tv = _task_vectors(base, others)  # [n, *shape]
    if select_topk < 1:
        tv.mul_(_most_varied(tv, select_topk))  # x * False is ±0, as mergekit's 0-mask gives
    agree = torch.where(tv.sum(dim=0) >= 0, tv > 0, tv < 0)  # [n, *shape]; zeros agree with neither
    w = tv.square().reshape(n, -1).mean(dim=1)  # [n]
    total = w.sum().item()
    # All children equal to the base: no energy to weigh by; any weights give the base back.
    w = torch.ones_like(w) / n if abs(total) < 1e-6 else w / total
    kept = w.reshape(n, *[1] * base.dim()) * agree  # [n, *shape]
    merged = (tv * kept).sum(dim=0)
    return base + merged / kept.sum(dim=0).clamp(min=1e-6)


def _most_varied(tv: torch.Tensor, density: float) -> torch.Tensor:
    """Bool mask [*shape] of the ``int(nonzero * density)`` positions of largest variance across
    the children (population variance); positions where every child agrees are never counted."""
    if density <= 0:
        return torch.zeros(tv.shape[1:], dtype=torch.bool, device=tv.device)
    var = torch.var(tv, dim=0, unbiased=False)
    # A 0-dim int64 count times a Python float is a float32 product: the k mergekit gets.
    k = int(torch.count_nonzero(var) * density)
    keep = torch.zeros(var.numel(), dtype=torch.bool, device=tv.device)
    if k:
        keep[torch.topk(var.reshape(-1), k).indices] = True  # the same call as mergekit: same ties
    return keep.reshape(var.shape)


def nearswap(t: float, base: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """NearSwap: move each entry of the base toward ``other`` by the fraction t / |base - other|,
    clamped to [0, 1]. Entries closer than ``t`` take ``other``'s value; the further apart two
    entries are, the more of the base is kept."""
    dist = (base - other).abs_().clamp_(min=1e-6)
    w = (t / dist).clamp_(0, 1)
    return w * other + (1 - w) * base


def arcee_fusion(base: torch.Tensor, other: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Arcee Fusion: take ``other``'s value only where its change matters, base's elsewhere.

    importance = |other - base| * KL(softmax(other) || softmax(base)) over the last axis (one KL
    per row, broadcast along it); an entry is taken when its importance reaches Tukey's outlier
    fence, median + 1.5 * IQR of all the tensor's importances. On tensors over
    ``QUANTILE_SAMPLE`` entries the quartiles come from a sample drawn with ``generator``.
    """
    if base.numel() == 0:
        return base.clone()
    delta = other - base
    importance = delta.abs() * _row_kl(other, base)
    fence = _tukey_fence(importance, generator)
    return base + delta * (importance >= fence).float()  # a float32 mask: half inputs give float32


def _row_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(softmax(p) || softmax(q)) along the last axis, [..., 1]; eps keeps log finite."""
    p = F.softmax(p_logits, dim=-1) + eps
    q = F.softmax(q_logits, dim=-1) + eps
    return torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)


def _tukey_fence(values: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """median + 1.5 * (q3 - q1), each quartile the sorted entry at index int(q * (n - 1))."""
    flat = values.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE:
        pick = torch.randint(flat.numel(), (QUANTILE_SAMPLE,), generator=generator, device=flat.device)
        flat = flat[pick]
    ordered = torch.sort(flat).values
    at = (torch.tensor([0.25, 0.5, 0.75], device=flat.device) * (ordered.numel() - 1)).long()
    q1, median, q3 = ordered[at]
    return median + 1.5 * (q3 - q1)


def ram(base: torch.Tensor, others: Sequence[torch.Tensor], epsilon: float = 1e-5, *,
        r: float | None = None, alpha: float = 0.2) -> torch.Tensor:
    """RAM: an entry changed (|delta| > epsilon) by one child only keeps that child's delta
    whole; an entry changed by several gets the mean of their deltas; unchanged entries stay.

    RAM+ (tensor-local, ``r`` given): child i's unique entries are scaled by
    1 + r * clamp(rho_i, 0, alpha), rho_i = (entries it shares) / (entries it alone changes),
    counted over this tensor.
    """
    if not others:
        return base
    n = len(others)
    tv = _task_vectors(base, others).reshape(n, base.numel())  # numel, not -1: empty tensors too
    changed = tv.abs() > epsilon  # [n, N]
    count = changed.sum(dim=0, keepdim=True)  # [1, N] int64: children changing each entry
    shared, unique = count > 1, count == 1
    tv.mul_(changed)  # entries within epsilon of the base are dropped (±0)
    solo = tv * unique
    if r is not None:
        rho = (changed & shared).sum(dim=1) / (changed & unique).sum(dim=1).clamp(min=epsilon)  # [n] float32
        solo = solo * (1 + r * rho.clamp(min=0, max=alpha)).unsqueeze(-1)  # float32 for half inputs
    merged = (solo + tv * shared / count.clamp(min=1)).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)
