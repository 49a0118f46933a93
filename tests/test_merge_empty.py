"""Every method of the one methods table on 0-element tensors: the result is an empty tensor of
the same shape and dtype (a parent may hold an empty buffer; no kernel may crash or invent values).
Parametrized over ``METHODS`` itself, so a method added to the table is tested here unasked."""

from __future__ import annotations

import pytest
import torch

from merge.methods import METHODS, REQUIRED, Call

# A valid value for each parameter a method requires (the rest take their defaults).
_REQUIRED_VALUES = {"weight": 0.5, "t": 0.5, "statistics": "unused"}


def _inputs(method) -> tuple[int, int | None]:
    """(number of inputs, base index) that satisfy the method's input rules."""
    n = max(method.min_inputs, 1 + (method.min_non_base or 0), 2)
    if method.max_inputs:
        n = min(n, method.max_inputs)
    if method.max_non_base:
        n = min(n, method.max_non_base + (method.base != "ignored"))
    return n, (0 if method.base != "ignored" else None)


def _values(method, scopes: tuple[str, ...]) -> dict:
    return {p.name: (_REQUIRED_VALUES[p.name] if p.default is REQUIRED else p.default)
            for p in method.params if p.scope in scopes}


@pytest.mark.parametrize("shape", [(0,), (0, 4), (4, 0)])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_merges_empty_tensors_to_an_empty_tensor(name, shape):
    method = METHODS[name]
    n, base = _inputs(method)
    tensors = [torch.empty(shape, dtype=torch.float32) for _ in range(n)]
    per_input = [_values(method, ("input",) if i == base else ("input", "non_base")) for i in range(n)]
    stats = [torch.empty(shape) if method.statistics == "fisher" else
             (torch.eye(shape[-1]) if method.statistics == "gram" else None) for _ in range(n)]
    call = Call(name=f"model.layers.0.{name}", tensors=tensors, base_index=base, shared=_values(method, ("shared",)),
                per_input=per_input, generators=[torch.Generator().manual_seed(i) for i in range(n)],
                stats=stats if method.statistics else [None] * n)
    out = method.kernel(call)
    assert tuple(out.shape) == shape and out.dtype == torch.float32 and out.numel() == 0
