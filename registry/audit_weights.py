"""Weight sanity, streamed one tensor (or one block of rows) at a time through ``safe_open``.

Per parent: non-finite values, all-zero tensors, dtypes outside the policy. Against the base:
the L2 distance ‖θ_parent − θ_base‖ over every tensor both share with the same shape; a parent
whose distance is orders of magnitude beyond its siblings' is not a fine-tune of that base
(a different pretraining run, a corrupted or adversarial checkpoint) and is refused.
Peak memory is two blocks of at most ``_BLOCK_ELEMENTS`` values, whatever the model size.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

import torch
from safetensors import safe_open

from merge.layout import ModelLayout
from registry.licenses import WeightPolicy
from registry.schemas import Finding

_BLOCK_ELEMENTS = 1 << 24  # 16M values: 64 MB as float32
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass
class WeightScan:
    findings: list[Finding] = field(default_factory=list)
    delta_norm: float | None = None  # ‖θ − θ_base‖₂, None without a comparable base
    base_norm: float | None = None
    n_tensors: int = 0
    n_parameters: int = 0
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype -> tensor count


class _Reader:
    """Opens each shard once; yields a tensor in row blocks, as float32."""

    def __init__(self, stack: ExitStack, layout: ModelLayout):
        self._stack, self._layout, self._handles = stack, layout, {}

    def blocks(self, name: str) -> Iterator[torch.Tensor]:
        shard, info = self._layout.tensors[name]
        if shard not in self._handles:
            self._handles[shard] = self._stack.enter_context(
                safe_open(str(self._layout.path / shard), framework="pt", device="cpu"))
        handle = self._handles[shard]
        numel = math.prod(info.shape)
        if not info.shape or numel <= _BLOCK_ELEMENTS:
            yield handle.get_tensor(name).float()
            return
        rows = max(1, _BLOCK_ELEMENTS // max(1, numel // info.shape[0]))
        sliced = handle.get_slice(name)
        for start in range(0, info.shape[0], rows):
            yield sliced[start:start + rows].float()


def _summary(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def scan_weights(layout: ModelLayout, ref: str, policy: WeightPolicy, base: ModelLayout | None = None) -> WeightScan:
    """Stream every tensor of ``layout`` (and of ``base`` alongside, when given)."""
    scan = WeightScan()
    nonfinite: list[str] = []
    zero_matrix: list[str] = []
    zero_vector: list[str] = []
    odd_dtype: list[str] = []
    delta_sq = base_sq = 0.0
    compared = 0
    with ExitStack() as stack:
        mine = _Reader(stack, layout)
        theirs = _Reader(stack, base) if base is not None else None
        for name, (_, info) in sorted(layout.tensors.items()):
            scan.n_tensors += 1
            scan.n_parameters += math.prod(info.shape)
            scan.dtypes[info.dtype] = scan.dtypes.get(info.dtype, 0) + 1
            if info.dtype not in policy.allowed_dtypes:
                odd_dtype.append(f"{name} ({info.dtype})")
            if info.dtype not in _FLOAT_DTYPES or math.prod(info.shape) == 0:
                continue  # integer buffers cannot hold NaN; a merge does not average them
            comparable = theirs is not None and name in base.tensors and base.shape(name) == info.shape
            base_blocks = theirs.blocks(name) if comparable else None
            bad = any_nonzero = False
            t_delta = t_base = 0.0
            for block in mine.blocks(name):
                if not bool(torch.isfinite(block).all()):
                    bad = True
                any_nonzero = any_nonzero or bool((block != 0).any())
                if base_blocks is not None:
                    ref_block = next(base_blocks)
                    t_delta += float((block - ref_block).double().pow(2).sum())
                    t_base += float(ref_block.double().pow(2).sum())
            if bad:
                nonfinite.append(name)
            elif not any_nonzero:
                (zero_matrix if len(info.shape) >= 2 else zero_vector).append(name)
            # A non-finite base is reported on the base itself; it says nothing about this parent.
            if comparable and not bad and math.isfinite(t_delta + t_base):
                delta_sq += t_delta
                base_sq += t_base
                compared += 1

    add = scan.findings.append
    if nonfinite:
        add(Finding(parent=ref, check="weights.nonfinite", severity="error",
                    message=f"NaN or Inf in {len(nonfinite)} tensor(s): {_summary(nonfinite)}; the checkpoint is corrupt, re-export it"))
    if zero_matrix:
        add(Finding(parent=ref, check="weights.zero", severity=policy.zero_matrix,
                    message=f"all-zero weight matrix in {len(zero_matrix)} tensor(s): {_summary(zero_matrix)}; a wiped or corrupt weight"))
    if zero_vector:
        add(Finding(parent=ref, check="weights.zero", severity=policy.zero_vector,
                    message=f"all-zero vector in {len(zero_vector)} tensor(s): {_summary(zero_vector)} (often an untrained bias)"))
    if odd_dtype:
        add(Finding(parent=ref, check="weights.dtype", severity=policy.unexpected_dtype,
                    message=f"dtype outside {list(policy.allowed_dtypes)} in {len(odd_dtype)} tensor(s): {_summary(odd_dtype)}"))
    if compared and not nonfinite:
        scan.delta_norm, scan.base_norm = math.sqrt(delta_sq), math.sqrt(base_sq)
    return scan


def delta_outliers(deltas: dict[str, float], base_ref: str, policy: WeightPolicy) -> list[Finding]:
    """Compare each sibling's distance from the base with the median of the others'."""
    findings: list[Finding] = []
    for ref, delta in deltas.items():
        if delta == 0.0:
            findings.append(Finding(parent=ref, check="weights.delta", severity="info",
                                    message=f"identical to the base {base_ref} in every compared tensor; merging it adds nothing"))
            continue
        others = [d for r, d in deltas.items() if r != ref and d > 0.0]
        if not others:
            continue
        typical = statistics.median(others)
        ratio = delta / typical
        if ratio > policy.delta_ratio_limit:
            findings.append(Finding(
                parent=ref, check="weights.delta", severity="error",
                message=f"distance from the base {base_ref} is {delta:.3g}, {ratio:.0f}× the median of its siblings' "
                        f"({typical:.3g}; limit {policy.delta_ratio_limit:g}×): not a fine-tune of this base; refused",
            ))
    return findings
