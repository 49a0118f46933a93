"""Merge kernels: plain functions over tensors of one output weight, all of the same shape.

Each follows the numerical procedure of the mergekit 0.1.5 method of the same name (operation
order and working dtype), so the same inputs give the same tensors. Inputs arrive already cast to
the recipe's ``dtype`` (or the promoted input dtype); the caller casts the result to ``out_dtype``.
Paper links live in the method table (``merge.methods``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from merge import sparsify as sp

_CHUNK = 1024 * 1024  # slerp: elements per chunk of full-precision scratch (its norms sum per chunk)
# Elementwise kernels: a few float32 arrays of this many elements stay in a 2 MB L2 cache; with
# 1M-element chunks the same work ran ~35% slower, bound by memory traffic.
_SPAN = 256 * 1024


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _spans(n: int, size: int = _SPAN):
    """Chunks of a flat index range; elementwise results do not depend on the chunk size."""
    return [(s, min(s + size, n)) for s in range(0, n, size)] or [(0, 0)]


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """Weighted average, accumulated in float32: sum_i w_i x_i (/ sum_i w_i when normalize)."""
    first = tensors[0]
    acc = _acc_dtype(first)
    w = torch.tensor(list(weights), dtype=acc, device=first.device)
    total = w.sum()
    flat = [t.reshape(-1) for t in tensors]
    out = torch.empty_like(flat[0])
    # Values as mergekit's zeros + addcmul_(x_i, w_i) over whole tensors; upcasting each chunk
    # first keeps addcmul_ on its fast same-dtype path, and chunks keep the float32 scratch in cache.
    for s, e in _spans(out.numel()):
        part = flat[0][s:e].to(acc) * w[0]
        for t, c in zip(flat[1:], w[1:].unbind(0)):
            part.addcmul_(t[s:e].to(acc), c)
        if normalize:
            part.div_(total)
        out[s:e] = part
    return out.reshape(first.shape)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = 0.9995, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation of the flattened tensors; linear when nearly (anti)parallel.

    t=0 gives v0, t=1 gives v1. Norms and the dot product are accumulated chunk by chunk in
    float32 (bounded scratch), the result is written back in the input dtype.
    """
    acc = _acc_dtype(v0)
    a = v0.reshape(1, -1)
    b = v1.reshape(1, -1)
    tt = torch.tensor([[t]], dtype=acc)
    if not a.shape[1]:
        return ((1 - tt) * a + tt * b).reshape(v0.shape).to(v0.dtype)
    spans = [(s, s + _CHUNK) for s in range(0, a.shape[1], _CHUNK)]
    na = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a[:, s:e].to(acc), dim=1, keepdim=True) for s, e in spans]), dim=0)
    nb = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(b[:, s:e].to(acc), dim=1, keepdim=True) for s, e in spans]), dim=0)
    na = torch.where(na > eps, na, 1)
    nb = torch.where(nb > eps, nb, 1)
    dot = torch.stack([((a[:, s:e].to(acc) / na) * (b[:, s:e].to(acc) / nb)).sum(dim=1, keepdim=True) for s, e in spans])
    dot = dot.sum(dim=0).clamp(-1, 1)
    lin = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(lin, 0, dot))
    sin_theta = torch.sin(theta)
    ca = torch.where(lin, 1 - tt, torch.sin((1 - tt) * theta) / sin_theta)
    cb = torch.where(lin, tt, torch.sin(tt * theta) / sin_theta)
    out = torch.empty_like(a)
    for s, e in spans:
        out[:, s:e] = ca * a[:, s:e].to(acc) + cb * b[:, s:e].to(acc)
    return out.reshape(v0.shape)


def nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool = False, flatten: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """SLERP per row (or per column, or over the flattened tensor), in the input dtype."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def _rounder(dtype: torch.dtype) -> tuple[torch.dtype, Callable[[torch.Tensor], torch.Tensor]]:
    """Working dtype for elementwise math on ``dtype`` values, and the rounding back to ``dtype``.

    bfloat16/float16 work in float32, rounding after every operation where torch's own
    half-precision kernel would round. torch computes each half-precision op in float32 and
    rounds once, and +, -, *, / rounded twice (float32, then half) equal the correctly rounded
    result since float32 carries more than 2p+2 bits; so the values are the same bits, at
    float32 speed. Sums over parents accumulate in float32 in row order in both.
    """
    if dtype in (torch.bfloat16, torch.float16):
        return torch.float32, lambda x: x.to(dtype).to(torch.float32)
    return dtype, lambda x: x


def task_arithmetic(
    base: torch.Tensor,
    others: Sequence[torch.Tensor],
    *,
    weights: Sequence[float],
    sparsifier: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    consensus: bool = False,
    normalize: bool = False,
    lam: float = 1.0,
    int8_mask: bool = False,
    consume: bool = False,
) -> torch.Tensor:
    """Generalized task arithmetic: base + lam * combine_i(w_i * sparsify(x_i - base)).

    Task arithmetic: no sparsifier, plain sum. TIES: magnitude trimming + sign consensus
    (majority by summed mass) + average over agreeing entries. DARE/DELLA/Breadcrumbs swap the
    sparsifier; ``sparsifier(delta, i)`` is called for parent ``i`` in order. ``consume=True``
    lets the deltas overwrite ``others`` (the streaming merge owns its freshly read inputs).
    """
    if not others:
        return base
    dtype = base.dtype
    # Magnitude trimming is applied chunk by chunk below (the k-th largest is found up front).
    top = getattr(sparsifier, "top", None)
    deltas, tops = [], []
    for i, x in enumerate(others):
        d = x.sub_(base) if consume else x - base
        if top is not None:
            tops.append(top(d, i))
            deltas.append(d)
        else:
            deltas.append(sparsifier(d, i) if sparsifier else d)
        del d
    work, rnd = _rounder(dtype)
    w = torch.tensor(list(weights), dtype=dtype, device=base.device).reshape(-1, 1).to(work)
    # Everything below is elementwise over positions (sums run over parents), so it runs on
    # cache-sized chunks of the flattened tensors with the same values as whole-tensor ops,
    # and never holds a [parents, *shape] buffer.
    flat = [d.reshape(-1) for d in deltas]
    base_flat = base.reshape(-1)
    out = torch.empty_like(base_flat)
    one = torch.ones((), dtype=work, device=base.device)
    for s, e in _spans(base_flat.numel()):
        rows = [d[s:e].to(work) for d in flat]
        for i, t in enumerate(tops):
            if t is not None:  # dropped entries become ±0, as x * 0 does (a float mask: bool is slow)
                rows[i] = rows[i] * t.keep(s, e).to(work)
        chunk = rnd(torch.stack(rows).mul_(w))
        if consensus:
            # TIES "elect sign": an entry counts where its sign agrees with the summed deltas'
            # (sum >= 0 counts as positive). copysign(1, -0.0) is -1, but a column sums to -0.0
            # only when all its entries are zeros, which agree with neither sign.
            elected = torch.copysign(one, chunk.sum(dim=0))
            agree = (chunk * elected).sign_().clamp_(min=0)  # 1.0 / 0.0; mergekit's int8_mask is only its scratch dtype
            mixed = rnd((chunk * agree).sum(dim=0))
            divisor = rnd((w * agree).sum(dim=0))
            divisor = torch.where(divisor == 0, one, divisor)
        else:
            mixed = rnd(chunk.sum(dim=0))
            divisor = rnd(w.sum(dim=0))
            divisor[divisor.abs() < 1e-8] = 1
        if normalize:
            mixed = rnd(mixed / divisor)
        if lam != 1:
            mixed = rnd(mixed * lam)
        out[s:e] = base_flat[s:e].to(work) + mixed
    return out.reshape(base.shape)


def model_stock(base: torch.Tensor, others: Sequence[torch.Tensor], filter_wise: bool = False) -> torch.Tensor:
    """Model Stock: interpolate between the fine-tuned average and the base by the mean cosine
    of the task vectors, t = k cos / (1 + (k - 1) cos)."""
    shape = base.shape
    if filter_wise:
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [x.unsqueeze(0) if base.dim() == 1 else x for x in others]
    else:
        w0, ws = base.reshape(-1), [x.reshape(-1) for x in others]
    offsets = [x - w0 for x in ws]
    cos = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cos.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    c = torch.stack(cos).mean(dim=0).unsqueeze(-1)
    k = len(ws)
    denom = 1 + (k - 1) * c
    singular = denom.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(c), (k * c) / torch.where(singular, torch.ones_like(denom), denom))
    return (t * (sum(ws) / k) + (1 - t) * w0).reshape(shape)


def multislerp(tensors: Sequence[torch.Tensor], weights: Sequence[float], base: torch.Tensor | None = None,
               normalize_weights: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Barycentric SLERP on the hypersphere: tangent-space average at the weighted mean direction."""
    if len(tensors) == 1:
        return tensors[0]
    if tensors[0].numel() == 0:  # no direction to average; view(n, -1) is ambiguous on 0 elements
        return tensors[0].clone()
    x = torch.stack(list(tensors), dim=0)
    if base is not None:
        x -= base
    flat = x.view(x.shape[0], -1)
    w = torch.tensor(list(weights), dtype=x.dtype, device=x.device)
    if normalize_weights:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if x.shape[0] != 2:
            raise ValueError("multislerp: weighted sum of the inputs is zero (antipodal inputs); change the weights")
        out = (x[0] * w[0] + x[1] * w[1]).view(x.shape[1:])
        return out + base if base is not None else out
    mean = mean / mean_norm
    tangent = units - (units * mean).sum(-1, keepdim=True) * mean
    tan = (tangent * w.view(-1, 1)).sum(0)
    tn = torch.norm(tan) + eps
    out = (mean * torch.cos(tn) + tan * (torch.sin(tn) / tn)) * (norms.squeeze(-1) * w).sum()
    out = out.view(x.shape[1:])
    return out + base if base is not None else out


def karcher(tensors: Sequence[torch.Tensor], max_iter: int = 10, tol: float = 1e-5) -> torch.Tensor:
    """Equal-weight Karcher (Riemannian) mean of directions, scaled by the mean norm."""
    if len(tensors) == 1:
        return tensors[0]
    acc = _acc_dtype(tensors[0])
    alphas = [1.0 / len(tensors)] * len(tensors)
    norms = [torch.linalg.vector_norm(t.to(acc)) for t in tensors]
    units = [torch.zeros_like(t) if n.item() == 0.0 else (t / n).to(t.dtype) for t, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return sum(t * 0 for t in tensors)
    va = [alphas[i] for i in valid]
    va = [a / sum(va) for a in va]
    vu = [units[i] for i in valid]
    mean = torch.zeros_like(vu[0])
    for a, u in zip(va, vu):
        mean += a * u
    mn = torch.linalg.vector_norm(mean.to(acc))
    mean = vu[0].clone() if mn.item() < tol else (mean / mn).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for a, u in zip(va, vu):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (u - dot * mean)
        tn = torch.linalg.vector_norm(tangent.to(acc))
        if tn.item() < tol:
            break
        mean = (torch.cos(tn) * mean + torch.sin(tn) * (tangent / tn)).to(mean.dtype)
        un = torch.linalg.vector_norm(mean.to(acc))
        if un.item() > tol:
            mean = (mean / un).to(mean.dtype)
    return sum(a * n for a, n in zip(alphas, norms)) * mean


def fisher(tensors: Sequence[torch.Tensor], fishers: Sequence[torch.Tensor], weights: Sequence[float],
           eps: float = 1e-8) -> torch.Tensor:
    """Fisher-weighted average (Matena & Raffel): sum_i w_i F_i x_i / sum_i w_i F_i, in float32.

    ``fishers`` are diagonal Fisher estimates of the same shape as the weights; entries where
    every Fisher is ~0 fall back to the plain weighted mean (eps added to each F_i).
    """
    acc = _acc_dtype(tensors[0])
    num = torch.zeros_like(tensors[0], dtype=acc)
    den = torch.zeros_like(tensors[0], dtype=acc)
    for x, f, w in zip(tensors, fishers, weights):
        fw = (f.to(acc) + eps) * w
        num.addcmul_(fw, x.to(acc))
        den.add_(fw)
    return (num / den).to(tensors[0].dtype)


def regmean(tensors: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], alpha: float = 0.9,
            weights: Sequence[float] | None = None) -> torch.Tensor:
    """RegMean (Jin et al.) for a linear layer y = W x, W [out, in], Gram G_i = X_iᵀX_i [in, in]:
    W* = (sum_i W_i G̃_i)(sum_i G̃_i)^-1, with G̃ = alpha G + (1 - alpha) diag(G) for stability.

    ``weights`` scale each parent's Gram (how much its calibration data counts in the joint least
    squares); equal weights, whatever their value, give plain RegMean.

    A sequential statistic ``[2, in, in]`` (``mergeops calibrate --kind sequential``) holds
    [Xₘᵀ Xₘ, Xₘᵀ Xᵢ]: the merged model's inputs Xₘ to this layer, with every earlier layer already
    merged, beside the parent's own Xᵢ on the same tokens. The fit is then
    min Σᵢ |Xₘ Wᵀ − Xᵢ Wᵢᵀ|², W* = (Σᵢ Wᵢ Cᵢᵀ)(Σᵢ Gₘᵢ)⁻¹: each layer also undoes the drift of its
    inputs that the layers before it leave."""
    acc = torch.float64

    def shrunk(m: torch.Tensor) -> torch.Tensor:
        m = m.to(acc)
        return alpha * m + (1 - alpha) * torch.diag(torch.diagonal(m))

    lhs = None
    rhs = None
    for i, (w, s) in enumerate(zip(tensors, grams)):
        sequential = s.dim() == 3
        g = shrunk(s[0] if sequential else s)
        c = shrunk(s[1]) if sequential else None
        if weights is not None:
            g = g * float(weights[i])
            c = None if c is None else c * float(weights[i])
        term = w.to(acc) @ g if c is None else w.to(acc) @ c.T
        lhs = term if lhs is None else lhs + term
        rhs = g if rhs is None else rhs + g
    # W* rhs = lhs  ->  rhs^T W*^T = lhs^T (rhs is symmetric)
    out = torch.linalg.solve(rhs, lhs.T).T
    return out.to(tensors[0].dtype)


class _Trim:
    """TIES magnitude trimming; ``task_arithmetic`` applies ``top`` chunk by chunk."""

    def __init__(self, densities):
        self.densities = list(densities)

    def top(self, delta: torch.Tensor, i: int) -> sp.TopK | None:
        return sp.magnitude_top(delta, self.densities[i])

    def __call__(self, delta: torch.Tensor, i: int) -> torch.Tensor:
        return sp.magnitude(delta, self.densities[i], inplace=True)


def sparsifier(kind: str | None, *, densities, rescale: bool, gammas=None, epsilons=None, generators=None,
               sort_ties: bool = False):
    """Bind a sparsification kind and per-parent settings into ``f(delta, parent_index)``."""
    if kind is None:
        return None
    if kind == "magnitude":
        if not rescale and not sort_ties:
            return _Trim(densities)
        return lambda d, i: sp.magnitude(d, densities[i], rescale, sort_ties, inplace=True)
    if kind == "random":
        return lambda d, i: sp.bernoulli(d, densities[i], rescale, generators[i])
    if kind == "magnitude_outliers":
        return lambda d, i: sp.magnitude_outliers(d, densities[i], rescale, gammas[i])
    if kind == "della":
        return lambda d, i: sp.della_magprune(d, densities[i], epsilons[i], rescale, generators[i])
    raise ValueError(f"unknown sparsification {kind!r}")
