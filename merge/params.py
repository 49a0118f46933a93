"""Resolve a parameter for one tensor: filters, layer gradients and precedence, as mergekit does.

A gradient ``[a, b, c]`` is interpolated piecewise-linearly at ``t`` in [0, 1], where ``t`` is the
layer's position within its slice (``i / (n - 1)``; 1 for a one-layer slice; 0 for tensors outside
the layers: embeddings, final norm, head). Lists of booleans or strings select
``values[int(t * (len - 1))]``. A list of ``{filter, value}`` applies the first whose filter is a
substring of the tensor name (no filter or ``*`` matches all). Precedence: the source's own
parameters, then the slice's, then the recipe's global ones; the first that resolves wins.
"""

from __future__ import annotations

from typing import Any, Iterable

from merge.errors import RecipeError
from merge.methods import Param
from merge.recipe import Conditional, Params

_MISSING = object()


def _cast(param: Param, value: Any, where: str) -> Any:
    return param.cast(value, where)


def evaluate(setting: Any, tensor_name: str, t: float, param: Param, where: str) -> Any:
    """The value of one setting for ``tensor_name`` at layer position ``t`` (None: no match)."""
    if isinstance(setting, Conditional):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return _cast(param, setting, where)
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            values = [_cast(param, e, where) for e in setting]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                return values[int(t * (len(values) - 1))]
            scaled = t * (len(values) - 1)
            i0 = int(scaled)
            i1 = min(len(values) - 1, i0 + 1)
            frac = scaled - i0
            return _cast(param, (1 - frac) * values[i0] + frac * values[i1], where)
        for cond in setting:
            if cond.filter is None or cond.filter == "*" or (tensor_name and cond.filter in tensor_name):
                return evaluate(cond.value, tensor_name, t, param, where)
        return None
    raise RecipeError(f"{where}: unexpected value {setting!r} for {param.name!r}")


def resolve(param: Param, scopes: Iterable[Params | None], tensor_name: str, t: float, where: str) -> Any:
    """First resolving scope wins; else the default; else RecipeError naming tensor and parent."""
    for scope in scopes:
        if scope is not None and param.name in scope:
            value = evaluate(scope[param.name], tensor_name, t, param, where)
            if value is not None:
                return value
    if param.required:
        raise RecipeError(f"missing required parameter {param.name!r} for {where} (tensor {tensor_name})")
    return param.default
