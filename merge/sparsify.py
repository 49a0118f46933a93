"""Sparsification of task vectors (deltas = child - base): which entries of a delta survive.

Plain functions over tensors. Each mirrors the operation order of mergekit 0.1.5's
``mergekit.sparsify`` so results agree in the same dtype, with two deliberate differences:

* ``magnitude`` keeps the ``k`` largest |delta| like mergekit, but finds them with an exact
  two-level radix histogram over the float32 bit pattern (O(n)) instead of a full ``argsort``
  (O(n log n), the bulk of mergekit's TIES time). Entries whose magnitude *equals* the k-th
  largest are kept lowest-index first; mergekit keeps whichever subset torch's unstable sort
  happens to put first. Only entries exactly at the threshold can differ, and the count kept is
  the same.
* The random methods (DARE's Bernoulli mask, DELLA's MAGPRUNE) take an explicit
  ``torch.Generator`` that the caller seeds per tensor and per parent, so a merge is
  reproducible whatever order or thread tensors are processed in (see ``merge.run``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _rescaled(tensor: torch.Tensor, mask: torch.Tensor, rescale: bool, eps: float = 1e-7) -> torch.Tensor:
    """``tensor * mask``, scaled back to the tensor's L1 norm when ``rescale`` (DARE's 1/p)."""
    masked = tensor * mask
    if not rescale:
        return masked
    before = tensor.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def _magnitude_bits(tensor: torch.Tensor) -> torch.Tensor:
    """Integers ordered like ``tensor.abs().float()`` (IEEE magnitudes order like their bits)."""
    if tensor.dtype in (torch.bfloat16, torch.float16):
        return tensor.reshape(-1).view(torch.int16) & 0x7FFF
    return tensor.abs().reshape(-1).float().view(torch.int32)


def _histogram(values: torch.Tensor, bins: int, chunk: int = 1 << 22) -> torch.Tensor:
    """bincount in pieces: it widens its input to int64, which for a whole embedding is 4x its size."""
    counts = torch.zeros(bins, dtype=torch.int64, device=values.device)
    for s in range(0, values.numel(), chunk):
        counts += torch.bincount(values[s : s + chunk], minlength=bins)
    return counts


@dataclass(frozen=True)
class TopK:
    """The ``k`` largest of the flat non-negative integers ``bits``: every entry above
    ``threshold``, plus the entries equal to it at indices below ``cut`` (lowest index first)."""

    bits: torch.Tensor
    threshold: int
    cut: int
    k: int

    def keep(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Bool mask of the kept entries among ``bits[start:end]``."""
        b = self.bits[start:end]
        if self.k <= 0:
            return torch.zeros(b.shape, dtype=torch.bool, device=b.device)
        end = start + b.numel()
        if self.cut <= start:
            return b > self.threshold
        if self.cut >= end:
            return b >= self.threshold
        split = self.cut - start
        return torch.cat([b[:split] >= self.threshold, b[split:] > self.threshold])


def _count_above(values: torch.Tensor, bins: int) -> torch.Tensor:
    """above[b] = number of entries >= b."""
    return _histogram(values, bins).flip(0).cumsum(0).flip(0)


def _cut_after(bits: torch.Tensor, value: int, need: int, chunk: int = 1 << 20) -> int:
    """Index just past the ``need``-th entry equal to ``value``, scanning chunk by chunk."""
    for s in range(0, bits.numel(), chunk):
        equal = bits[s : s + chunk] == value
        count = int(equal.sum(dtype=torch.int32))  # int32: the default int64 bool sum is ~10x slower
        if count >= need:
            return s + int(equal.nonzero()[need - 1]) + 1
        need -= count
    return bits.numel()


def top_k(bits: torch.Tensor, k: int) -> TopK:
    """The ``k`` largest of the flat non-negative integers ``bits`` (int16 or int32), exactly.

    Histogram the top 15 bits to find the bucket holding the k-th largest value; for 32-bit
    values a second histogram of the low 16 bits inside that bucket finds the value itself.
    The counts above the threshold come from the histograms, so only the entries equal to the
    threshold are scanned, to find where the ``k``-th kept one lies.
    """
    n = bits.numel()
    if k >= n:
        return TopK(bits, -1, 0, n)
    if k <= 0:
        return TopK(bits, 0, 0, 0)
    wide = bits.dtype == torch.int32
    high = bits >> 16 if wide else bits
    above = _count_above(high, 1 << 15)
    bucket = int((above >= k).nonzero().max())
    greater = int(above[bucket + 1]) if bucket + 1 < above.numel() else 0
    threshold = bucket
    if wide:
        low_above = _count_above(bits[high == bucket] & 0xFFFF, 1 << 16)
        low = int((low_above + greater >= k).nonzero().max())
        greater += int(low_above[low + 1]) if low + 1 < low_above.numel() else 0
        threshold = (bucket << 16) | low
    return TopK(bits, threshold, _cut_after(bits, threshold, k - greater), k)


def kth_largest_mask(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask over flat non-negative float32 ``magnitudes`` selecting exactly ``k`` largest."""
    return top_k(magnitudes.contiguous().view(torch.int32), k).keep()


def _kept(density: float, n: int) -> int:
    """How many of ``n`` entries TIES trimming keeps: ``max(1, int(density * n))``, none at density <= 0."""
    return 0 if density <= 0 or n == 0 else max(1, int(density * n))


def magnitude_top(tensor: torch.Tensor, density: float) -> TopK | None:
    """The entries TIES trimming keeps (the ``_kept`` largest |x|); None: all."""
    if density >= 1:
        return None
    return top_k(_magnitude_bits(tensor.contiguous()), _kept(density, tensor.numel()))


def magnitude(tensor: torch.Tensor, density: float, rescale: bool = False, sort: bool = False,
              inplace: bool = False) -> torch.Tensor:
    """TIES trimming: keep the ``max(1, int(density * n))`` largest-magnitude entries.

    ``sort=True`` selects with mergekit's full ``argsort`` (same tie choice, O(n log n)).
    ``inplace=True`` zeroes the dropped entries of ``tensor`` itself (no rescale then).
    """
    if density >= 1:
        return tensor
    k = _kept(density, tensor.numel())
    if k == 0:
        return torch.zeros_like(tensor)
    if sort:
        mask = torch.zeros(tensor.numel(), dtype=tensor.dtype, device=tensor.device)
        mask[torch.argsort(tensor.abs().reshape(-1).float(), descending=True)[:k]] = 1
    else:
        mask = top_k(_magnitude_bits(tensor.contiguous()), k).keep()  # bool: x * True = x, x * False = ±0
    if inplace and not rescale and tensor.is_contiguous():
        return tensor.mul_(mask.reshape_as(tensor))
    return _rescaled(tensor, mask.reshape_as(tensor), rescale)


def magnitude_outliers(tensor: torch.Tensor, density: float, rescale: bool = False, gamma: float = 0.01) -> torch.Tensor:
    """Model Breadcrumbs: drop the ``gamma`` largest outliers, then the smallest, keep ``density``."""
    if density >= 1:
        return tensor
    n = tensor.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bottom = max(0, n - target - n_top)
    w = tensor.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    order = torch.sort(w, descending=False).indices  # the same call as mergekit: same ties
    mask = torch.zeros(n, dtype=tensor.dtype, device=tensor.device)
    mask[order[n_bottom : n_bottom + target]] = 1
    return _rescaled(tensor, mask.reshape_as(tensor), rescale)


def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    # torch.bernoulli has no float16 CPU kernel; bf16 and accelerators work in place.
    if tensor.device.type != "cpu" or tensor.dtype == torch.bfloat16:
        return tensor.dtype
    return torch.float32


def bernoulli(tensor: torch.Tensor, density: float, rescale: bool, generator: torch.Generator) -> torch.Tensor:
    """DARE: keep each entry with probability ``density``; rescale by the L1 ratio (≈ 1/density)."""
    if density >= 1:
        return tensor
    work = _work_dtype(tensor)
    mask = torch.bernoulli(torch.full_like(tensor, density, dtype=work), generator=generator)
    return _rescaled(tensor.to(work), mask, rescale).to(tensor.dtype)


def della_magprune(
    tensor: torch.Tensor, density: float, epsilon: float, rescale: bool, generator: torch.Generator
) -> torch.Tensor:
    """DELLA MAGPRUNE: keep probability rises linearly with magnitude rank within each row,
    from ``density - epsilon`` (smallest) to ``density + epsilon`` (largest)."""
    if density >= 1 or tensor.numel() == 0:  # nothing to rank in an empty tensor
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise ValueError("epsilon must keep density ± epsilon inside (0, 1)")
    shape = tensor.shape
    work = _work_dtype(tensor)
    if tensor.dim() < 2:
        tensor = tensor.unsqueeze(0)
    ranks = torch.argsort(tensor.abs(), dim=1).argsort(dim=1).to(work) + 1
    lo = ranks.min(dim=1, keepdim=True).values
    hi = ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - lo) / (hi - lo)).clamp(0, 1)
    probs = (density - epsilon) + rank_norm * 2 * epsilon
    mask = torch.bernoulli(probs, generator=generator).to(work)
    return _rescaled(tensor.to(work), mask, rescale).to(tensor.dtype).reshape(shape)
