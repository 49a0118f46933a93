"""Golden numbers for the selective methods (sce, nearswap, arcee_fusion, ram, ramplus_tl) on
tensors small enough to check by hand, their parameter ranges, and finite outputs on degenerate
parents. Bit-equality with mergekit is in test_merge_mergekit.py."""

from __future__ import annotations

import pytest
import torch
import yaml

from merge import kernels_selective as ks
from merge.errors import RecipeError
from merge.methods import METHODS, Call
from merge.params import resolve
from merge.recipe import parse_recipe

ONES = torch.ones(4)


def test_sce_weights_by_mean_square_and_erases_disagreeing_signs():
    d1 = torch.tensor([1.0, -1.0, 1.0, 1.0])  # mean square 1
    d2 = torch.tensor([2.0, 2.0, -2.0, 0.0])  # mean square 3  -> weights 1/4, 3/4
    # summed deltas [3, 1, -1, 1] elect signs [+, +, -, +]; d1 disagrees at 1 and 2, d2's 0 counts for neither
    # 0: (1/4 * 1 + 3/4 * 2) / 1 = 1.75 ; 1, 2: d2 alone ; 3: d1 alone
    out = ks.sce(ONES, [ONES + d1, ONES + d2])
    assert torch.equal(out, torch.tensor([2.75, 3.0, -1.0, 2.0]))


def test_sce_select_topk_keeps_the_positions_that_vary_most():
    d1, d2 = torch.tensor([1.0, -1.0, 1.0, 1.0]), torch.tensor([2.0, 2.0, -2.0, 0.0])
    # variances across the two: [0.25, 2.25, 2.25, 0.25]; half of the 4 nonzero ones -> positions 1, 2
    out = ks.sce(ONES, [ONES + d1, ONES + d2], select_topk=0.5)
    assert torch.equal(out, torch.tensor([1.0, 3.0, -1.0, 1.0]))
    assert torch.equal(ks.sce(ONES, [ONES + d1, ONES + d2], select_topk=0.0), ONES)


def test_sce_of_children_equal_to_the_base_is_the_base():
    assert torch.equal(ks.sce(ONES, [ONES.clone(), ONES.clone()]), ONES)


def test_nearswap_moves_by_t_over_the_distance():
    base, other = ONES, torch.tensor([1.5, 3.0, -3.0, 1.0])
    # distances [0.5, 2, 4, 0] -> fractions t / d = [2 -> 1, 0.5, 0.25, 1e6 -> 1]
    assert torch.equal(ks.nearswap(1.0, base, other), torch.tensor([1.5, 2.0, 0.0, 1.0]))


def test_arcee_fusion_takes_entries_past_the_tukey_fence():
    base = torch.zeros(8)
    other = torch.tensor([1.0, -20.0, 3.0, 2.0, -5.0, 4.0, 7.0, 6.0])
    # one KL for a 1-D tensor: importance ranks as |delta|. Sorted |delta| 1 2 3 4 5 6 7 20:
    # q1 = 2, median = 4, q3 = 6 (indices int(q * 7) = 1, 3, 5) -> fence 4 + 1.5 * 4 = 10
    expected = torch.zeros(8)
    expected[1] = -20.0
    assert torch.equal(ks.arcee_fusion(base, other), expected)


def test_arcee_fusion_ignores_a_row_shifted_by_a_constant():
    base = torch.zeros(2, 4)
    other = torch.tensor([[3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    # row 0: same softmax as the base, KL 0, importance 0 though |delta| = 3. Row 1: K * [1, 2, 3, 4].
    # Sorted: 0 0 0 0 K 2K 3K 4K -> q1 = 0, median = 0, q3 = 2K -> fence 3K: the last two of row 1
    out = ks.arcee_fusion(base, other)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 4.0]]))


def test_arcee_fusion_samples_large_tensors_reproducibly():
    g = torch.Generator().manual_seed(0)
    n = ks.QUANTILE_SAMPLE + 4096
    base, other = torch.randn(n, generator=g), torch.randn(n, generator=g)
    a = ks.arcee_fusion(base, other, torch.Generator().manual_seed(1))
    b = ks.arcee_fusion(base, other, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    # the sampled fence sits where the exact one does: the share taken matches the exact share
    importance = (other - base).abs()
    q1, med, q3 = torch.quantile(importance, torch.tensor([0.25, 0.5, 0.75]))
    exact = (importance >= med + 1.5 * (q3 - q1)).float().mean().item()
    taken = (a != base).float().mean().item()
    assert abs(taken - exact) < 0.005 and 0 < taken < 0.2


def test_ram_keeps_unique_changes_whole_and_averages_shared_ones():
    base = torch.zeros(4)
    x1 = torch.tensor([1.0, 4.0, 2.0, 0.0])
    x2 = torch.tensor([3.0, 0.0, 0.0, 0.0])
    x3 = torch.tensor([0.0, 0.0, 0.0, 1e-6])  # below epsilon: not a change
    # 0: shared by x1 and x2 -> mean 2 ; 1, 2: x1 alone -> whole (a mean over 3 would give 4/3) ; 3: dropped
    assert torch.equal(ks.ram(base, [x1, x2, x3]), torch.tensor([2.0, 4.0, 2.0, 0.0]))


def test_ramplus_scales_unique_changes_by_the_shared_ratio():
    base = torch.zeros(4)
    xs = [torch.tensor([1.0, 4.0, 2.0, 0.0]), torch.tensor([3.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 1e-6])]
    # x1 shares 1 entry and alone changes 2: rho = 0.5 -> x1's unique entries times 1 + r * min(rho, alpha)
    assert torch.equal(ks.ram(base, xs, r=0.5, alpha=1.0), torch.tensor([2.0, 5.0, 2.5, 0.0]))  # x 1.25
    assert torch.equal(ks.ram(base, xs, r=0.5, alpha=0.25), torch.tensor([2.0, 4.5, 2.25, 0.0]))  # capped: x 1.125


_PARAMS = {"sce": {"select_topk": 0.5}, "nearswap": {"t": 1e-3}, "arcee_fusion": {},
           "ram": {"epsilon": 1e-5}, "ramplus_tl": {"epsilon": 1e-5, "r": 0.1, "alpha": 0.2}}


def _call(name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    n = len(tensors)
    params = {p.name: _PARAMS[name].get(p.name, p.default) for p in METHODS[name].params}
    return METHODS[name].kernel(Call(name, [t.clone() for t in tensors], 0, params, [{} for _ in tensors],
                                     [torch.Generator().manual_seed(i) for i in range(n)], [None] * n, owned=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(_PARAMS))
def test_outputs_are_finite_on_degenerate_parents(name, dtype):
    """Children equal to the base, to each other, zero tensors, one-element tensors, large and
    tiny deltas: no 0/0 or overflow may reach the output."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 32, generator=g)
    n = 2 if METHODS[name].max_inputs == 2 else 3
    cases = [
        [base] * n,
        [base] + [base + 1e-3 * torch.randn(16, 32, generator=g)] * (n - 1),
        [torch.zeros(16, 32)] * n,
        [torch.zeros(16, 32)] + [torch.full((16, 32), 1e-9)] * (n - 1),
        [base] + [base + 50 * torch.randn(16, 32, generator=g) for _ in range(n - 1)],
        [torch.ones(1)] + [torch.full((1,), 2.0 + i) for i in range(n - 1)],
    ]
    for tensors in cases:
        out = _call(name, [t.to(dtype) for t in tensors])
        assert out.shape == tensors[0].shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", [n for n in sorted(_PARAMS) if METHODS[n].min_inputs == 1])
def test_a_base_with_no_children_comes_back(name):
    assert torch.equal(_call(name, [ONES]), ONES)


def _recipe(method: str, params: dict) -> str:
    return yaml.safe_dump({"merge_method": method, "base_model": "b",
                           "models": [{"model": "b"}, {"model": "a"}], "parameters": params})


@pytest.mark.parametrize("method, key, value", [
    ("sce", "select_topk", 1.5), ("sce", "select_topk", -0.1), ("sce", "select_topk", float("nan")),
    ("nearswap", "t", 0.0), ("nearswap", "t", -1e-4), ("nearswap", "t", float("inf")),
    ("ram", "epsilon", -1e-5), ("ram", "epsilon", 2.0),
    ("ramplus_tl", "epsilon", 0.0), ("ramplus_tl", "r", -0.1), ("ramplus_tl", "alpha", 1e308),
    ("ramplus_tl", "r", "lots"),
])
def test_out_of_range_parameters_are_one_line_naming_the_key(method, key, value):
    with pytest.raises(RecipeError) as exc:
        parse_recipe(_recipe(method, {key: value}))
    assert f"'{key}'" in str(exc.value) and "\n" not in str(exc.value)


def test_nearswap_needs_t_and_arcee_fusion_takes_no_parameters():
    with pytest.raises(RecipeError, match="missing required parameter 't'"):
        resolve(METHODS["nearswap"].param("t"), [None], "x", 0.0, "nearswap")
    with pytest.raises(RecipeError, match="unknown parameter 't' for arcee_fusion"):
        parse_recipe(_recipe("arcee_fusion", {"t": 0.5}))
    ok = parse_recipe(_recipe("sce", {"select_topk": [0.0, 1.0], "int8_mask": True}))
    assert ok.method is METHODS["sce"]
