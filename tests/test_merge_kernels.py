"""Golden numbers for every merge method, on tensors small enough to check by hand."""

from __future__ import annotations

import math

import pytest
import torch

from merge import kernels as k
from merge import sparsify as sp
from merge.methods import METHODS, Call


def test_linear_half_half_is_the_mean():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 6.0, -1.0])
    assert torch.equal(k.linear([a, b], [0.5, 0.5]), torch.tensor([2.0, 4.0, 1.0]))
    # weights are normalised by default, not when normalize is false
    assert torch.equal(k.linear([a, b], [1.0, 1.0]), torch.tensor([2.0, 4.0, 1.0]))
    assert torch.equal(k.linear([a, b], [1.0, 1.0], normalize=False), torch.tensor([4.0, 8.0, 2.0]))


def test_slerp_endpoints_and_midpoint():
    v0, v1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(k.slerp(0.0, v0, v1), v0)
    assert torch.allclose(k.slerp(1.0, v0, v1), v1)
    mid = k.slerp(0.5, v0, v1)  # on the unit circle at 45 degrees, not the chord midpoint
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    # nearly parallel vectors fall back to linear interpolation
    assert torch.allclose(k.slerp(0.25, torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])), torch.tensor([1.25, 1.25]))


def test_ties_worked_2x3_example():
    base = torch.zeros(2, 3)
    d1 = torch.tensor([[3.0, -1.0, 0.5], [-2.0, 4.0, 0.1]])
    d2 = torch.tensor([[-0.9, -2.0, 1.0], [-3.0, -0.2, 0.3]])
    # density 0.5 keeps the 3 largest |delta| of each: d1 -> 3, -2, 4 ; d2 -> -2, 1, -3
    # elected sign (sign of the summed trimmed deltas): [+, -, +], [-, +, 0 -> +]
    # average of the agreeing entries: [[3, -2, 1], [-2.5, 4, 0]]
    s = k.sparsifier("magnitude", densities=[0.5, 0.5], rescale=False)
    out = k.task_arithmetic(base, [d1, d2], weights=[1.0, 1.0], sparsifier=s, consensus=True, normalize=True)
    assert torch.equal(out, torch.tensor([[3.0, -2.0, 1.0], [-2.5, 4.0, 0.0]]))


def test_task_arithmetic_adds_weighted_deltas():
    base = torch.tensor([1.0, 1.0])
    out = k.task_arithmetic(base, [torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])], weights=[1.0, 0.5], lam=2.0)
    assert torch.equal(out, torch.tensor([3.0, 3.0]))  # 1 + 2 * (1*[1,0] + 0.5*[0,2])


def test_dare_with_density_one_is_task_arithmetic():
    g = torch.Generator().manual_seed(0)
    base, x = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    s = k.sparsifier("random", densities=[1.0], rescale=True, generators=[g])
    assert torch.equal(k.task_arithmetic(base, [x], weights=[0.7], sparsifier=s),
                       k.task_arithmetic(base, [x], weights=[0.7]))


def test_dare_keeps_about_density_and_rescales_l1():
    d = torch.ones(100_000)
    out = sp.bernoulli(d, 0.3, rescale=True, generator=torch.Generator().manual_seed(1))
    kept = (out != 0).float().mean().item()
    assert abs(kept - 0.3) < 0.01
    assert out.abs().sum().item() == pytest.approx(d.abs().sum().item(), rel=1e-4)


def test_dare_same_seed_same_mask_other_seed_other_mask():
    d = torch.randn(1000)
    a = sp.bernoulli(d, 0.5, True, torch.Generator().manual_seed(3))
    b = sp.bernoulli(d, 0.5, True, torch.Generator().manual_seed(3))
    c = sp.bernoulli(d, 0.5, True, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_magnitude_keeps_largest_and_breaks_ties_by_index():
    d = torch.tensor([1.0, -5.0, 2.0, 2.0, -2.0, 0.5])
    assert torch.equal(sp.magnitude(d, 0.5), torch.tensor([0.0, -5.0, 2.0, 2.0, 0.0, 0.0]))
    keep = sp.kth_largest_mask(d.abs(), 3)
    assert keep.tolist() == [False, True, True, True, False, False]


def test_radix_topk_matches_argsort_without_ties():
    w = torch.rand(50_000, generator=torch.Generator().manual_seed(0))
    for k_ in (1, 17, 25_000, 49_999):
        ref = torch.zeros_like(w, dtype=torch.bool)
        ref[torch.argsort(w, descending=True)[:k_]] = True
        assert torch.equal(sp.kth_largest_mask(w, k_), ref)



def test_topk_chunks_agree_with_the_whole_mask_when_ties_straddle_a_chunk():
    bits = torch.tensor([3, 7, 5, 7, 7, 1, 7, 7, 2, 7], dtype=torch.int16)
    top = sp.top_k(bits, 5)  # 7 occurs 6 times: the first five 7s are kept, the last one is not
    whole = top.keep()
    assert whole.tolist() == [False, True, False, True, True, False, True, True, False, False]
    pieces = torch.cat([top.keep(s, min(s + 3, 10)) for s in range(0, 10, 3)])
    assert torch.equal(pieces, whole)
    assert sp.top_k(bits, 10).keep().all() and not sp.top_k(bits, 0).keep().any()


def _ties_reference(base, xs, weights, densities, normalize, lam):
    """mergekit 0.1.5's TIES written out in whole-tensor ops of the input dtype."""
    deltas = [sp.magnitude(x - base, d, sort=False) for x, d in zip(xs, densities)]
    w = torch.tensor(weights, dtype=base.dtype).reshape(-1, *[1] * base.dim())
    deltas = torch.stack(deltas) * w
    sign = deltas.sum(dim=0) >= 0
    mask = torch.where(sign, deltas > 0, deltas < 0)
    mixed = (deltas * mask).sum(dim=0)
    divisor = (w * mask).sum(dim=0)
    divisor[divisor == 0] = 1
    if normalize:
        mixed = mixed / divisor
    if lam != 1:
        mixed = mixed * lam
    return base + mixed


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_ties_kernel_is_bit_equal_to_half_precision_ops(dtype):
    """The kernel works in float32 chunks and rounds where a half-precision op would: the bits
    must be those of the plain ops in ``dtype`` (signed zeros included)."""
    g = torch.Generator().manual_seed(5)
    n = 300_000  # more than one chunk
    base = torch.randn(n, generator=g).to(dtype)
    base[:500] = -0.0
    xs = []
    for _ in range(3):
        d = torch.randn(n, generator=g) * torch.exp2(torch.randint(-14, 3, (n,), generator=g).float())
        d[torch.rand(n, generator=g) < 0.2] = 0.0
        xs.append((base.double() + d.double()).to(dtype))
    bits = torch.int16 if dtype != torch.float32 else torch.int32
    for weights, densities, normalize, lam in (([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], True, 1.0),
                                               ([1.0, -0.7, 0.3], [0.3, 1.0, 0.7], False, 0.6)):
        ref = _ties_reference(base, xs, weights, densities, normalize, lam)
        trim = k.sparsifier("magnitude", densities=densities, rescale=False)
        out = k.task_arithmetic(base, [x.clone() for x in xs], weights=weights, sparsifier=trim,
                                consensus=True, normalize=normalize, lam=lam)
        assert torch.equal(out.view(bits), ref.view(bits))

def test_breadcrumbs_drops_outliers_and_small():
    d = torch.arange(1.0, 11.0)  # 1..10
    out = sp.magnitude_outliers(d, density=0.5, gamma=0.2)  # drop top 2 and bottom 3
    assert out.tolist() == [0, 0, 0, 4, 5, 6, 7, 8, 0, 0]


def test_della_density_one_is_identity_and_probabilities_rise_with_rank():
    d = torch.linspace(0.01, 1.0, 2000).repeat(200, 1)
    assert torch.equal(sp.della_magprune(d, 1.0, 0.1, True, torch.Generator()), d)
    out = sp.della_magprune(d, 0.5, 0.4, False, torch.Generator().manual_seed(0))
    kept = (out != 0).float().mean(dim=0)
    assert kept[:200].mean() < 0.2 and kept[-200:].mean() > 0.8


def test_model_stock_identical_children_return_them():
    base = torch.zeros(6)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert torch.allclose(k.model_stock(base, [x, x.clone()]), x)  # cos = 1 -> t = 1


def test_model_stock_orthogonal_children_return_base():
    base = torch.zeros(2)
    out = k.model_stock(base, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])])  # cos = 0 -> t = 0
    assert torch.equal(out, base)


def test_nuslerp_and_multislerp_of_two_orthogonal_unit_vectors():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    half = torch.tensor([math.sqrt(0.5), math.sqrt(0.5)])
    assert torch.allclose(k.nuslerp(0.5, a, b), half, atol=1e-6)
    assert torch.allclose(k.multislerp([a, b], [1.0, 1.0]), half, atol=1e-6)


def test_karcher_of_identical_tensors_is_that_tensor():
    x = torch.tensor([3.0, 4.0])
    assert torch.allclose(k.karcher([x, x.clone(), x.clone()]), x)


def test_fisher_weighting_favours_the_confident_parent():
    a, b = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])
    fa, fb = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])
    assert torch.allclose(k.fisher([a, b], [fa, fb], [1.0, 1.0]), torch.tensor([0.25, 0.5]))


def test_regmean_recovers_the_joint_least_squares_solution():
    g = torch.Generator().manual_seed(0)
    x1, x2 = torch.randn(50, 4, generator=g), torch.randn(60, 4, generator=g)
    w1, w2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    # W* minimises |X1 W*ᵀ - X1 W1ᵀ|² + |X2 W*ᵀ - X2 W2ᵀ|²  (alpha = 1: exact Grams)
    out = k.regmean([w1, w2], [x1.T @ x1, x2.T @ x2], alpha=1.0)
    x = torch.cat([x1, x2])
    y = torch.cat([x1 @ w1.T, x2 @ w2.T])
    ref = torch.linalg.lstsq(x.double(), y.double()).solution.T.float()
    assert torch.allclose(out, ref, atol=1e-5)
    # identical Grams: RegMean is the plain mean
    same = k.regmean([w1, w2], [x1.T @ x1, x1.T @ x1], alpha=0.5)
    assert torch.allclose(same, (w1 + w2) / 2, atol=1e-5)


def test_weighted_regmean_is_the_weighted_least_squares_solution():
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(40, 4, generator=g), torch.randn(70, 4, generator=g)
    w1, w2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    # W* minimises 3 |X1 W*ᵀ - X1 W1ᵀ|² + 0.5 |X2 W*ᵀ - X2 W2ᵀ|²: rows of X_i scaled by sqrt(w_i)
    out = k.regmean([w1, w2], [x1.T @ x1, x2.T @ x2], alpha=1.0, weights=[3.0, 0.5])
    x = torch.cat([x1 * 3.0 ** 0.5, x2 * 0.5 ** 0.5])
    y = torch.cat([x1 @ w1.T * 3.0 ** 0.5, x2 @ w2.T * 0.5 ** 0.5])
    ref = torch.linalg.lstsq(x.double(), y.double()).solution.T.float()
    assert torch.allclose(out, ref, atol=1e-5)
    plain = k.regmean([w1, w2], [x1.T @ x1, x2.T @ x2], alpha=1.0)
    assert not torch.allclose(out, plain, atol=1e-3)
    # equal weights, whatever their value, are plain RegMean
    assert torch.allclose(k.regmean([w1, w2], [x1.T @ x1, x2.T @ x2], alpha=1.0, weights=[7.0, 7.0]), plain, atol=1e-6)


def test_passthrough_scales_its_single_input():
    x = torch.tensor([1.0, -2.0])
    call = Call("w", [x], None, {}, [{"scale": 0.5}])
    assert torch.equal(METHODS["passthrough"].kernel(call), torch.tensor([0.5, -1.0]))


def test_method_table_has_every_method_with_a_paper_link():
    expected = {"linear", "slerp", "nuslerp", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                "breadcrumbs_ties", "della", "della_linear", "model_stock", "passthrough", "multislerp", "karcher",
                "fisher", "regmean", "sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl"}
    assert set(METHODS) == expected
    assert all(m.paper.startswith("https://") for m in METHODS.values())
