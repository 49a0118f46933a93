"""M2N2's split-point crossover: SLERP with ratio w before a split point and 1 − w after it.

Two forms of the same rule:

- ``split_slerp_flat``: the paper's, over one flattened parameter vector; the angle is that of the
  whole vectors and the split falls between any two elements (used for flat models, e.g. an MLP).
- ``split_slerp_tensors``: over a model's tensors in a fixed order, split on a tensor boundary and
  each tensor SLERPed on its own with ``merge.kernels.slerp`` (its own angle). This is exactly what
  a ``slerp`` recipe with a per-tensor ``t`` computes, so an evolved model replays as an ordinary
  recipe; the price is a coarser split (tensor boundaries, not elements) and per-tensor angles.

Both return A at (w = 0, split = n) and B at (w = 1, split = n); at split = 0 the ratio is 1 − w.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from merge.kernels import slerp


def split_index(u: float, n: int) -> int:
    """A draw u ∈ [0, 1) as a split point in [0, n): units before it take w, the rest 1 − w."""
    return min(int(math.floor(u * n)), n - 1) if n else 0


def split_slerp_flat(w: float, split: int, a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """SLERP of flat vectors a, b [n] with ratio w on [0, split) and 1 − w on [split, n); linear where
    the vectors are (anti)parallel, as the reference implementation does."""
    a64, b64 = a.double(), b.double()
    t = torch.full_like(a64, w)
    t[split:] = 1 - w
    cos = torch.dot(a64 / a64.norm(), b64 / b64.norm()).clamp(-1, 1)
    omega = torch.arccos(cos)
    so = torch.sin(omega)
    if so <= eps:
        return ((1 - t) * a64 + t * b64).to(a.dtype)
    return ((torch.sin((1 - t) * omega) / so) * a64 + (torch.sin(t * omega) / so) * b64).to(a.dtype)


def tensor_ratios(w: float, split: int, n: int) -> list[float]:
    """The SLERP ratio of each of ``n`` tensors in order: w before ``split``, 1 − w from it on."""
    return [w if i < split else 1 - w for i in range(n)]


def split_slerp_tensors(w: float, split: int, a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Tensor-wise SLERP, ratio from ``tensor_ratios``; the kernel of the ``slerp`` merge method."""
    if len(a) != len(b):
        raise ValueError(f"parents have {len(a)} and {len(b)} tensors")
    return [slerp(t, x, y).to(x.dtype) for t, x, y in zip(tensor_ratios(w, split, len(a)), a, b)]
