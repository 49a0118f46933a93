"""The one table of merge methods: name -> Method (parameters, input rules, kernel, paper).

Filled in one place with a duplicate-name check (no registration by import side effect). The
task-arithmetic family (task_arithmetic, ties, dare_*, breadcrumbs*, della*) are settings of one
generalized kernel, ``kernels.task_arithmetic``, differing in sparsifier, sign consensus and
defaults, exactly as in mergekit 0.1.5.

A kernel adapter receives a ``Call``: the inputs of one output tensor in recipe order (base
flagged), the resolved parameters, per-parent random generators and calibration statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from merge import kernels as k
from merge import kernels_selective as ks
from merge.errors import RecipeError

REQUIRED = object()
# A weight, lambda or scale multiplies a whole parent or task vector: recipes use |w| <= ~2
# (negation included). 1000 leaves room for experiments, while a slipped exponent (1e308) is
# refused here instead of overflowing every tensor of the output.
_FACTOR = 1000.0
# karcher's fixed-point iteration converges in a handful of steps (mergekit's default is 10); each
# step is a pass over the tensor, so a bound keeps `max_iter: 1e12` from never ending.
MAX_ITER = 1000


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # float, bool, int or str
    scope: str  # "shared": one value; "input": per parent; "non_base": per non-base parent
    default: Any = REQUIRED
    # accepted range of a number: [low, high], (low, high] when ``low_open``; None: unbounded
    low: float | None = None
    high: float | None = None
    low_open: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def cast(self, value: Any, where: str) -> Any:
        """``value`` as this parameter's type, finite and in range; else one RecipeError line
        naming ``where`` (the model or slice) and the key."""
        if value is None and self.default is None:
            return None
        out = _as_type(self.type, value)
        if out is None:
            raise RecipeError(f"{where}: parameter {self.name!r} must be {self.type.__name__}, got {value!r}")
        if self.type in (int, float):
            if not math.isfinite(out):
                raise RecipeError(f"{where}: parameter {self.name!r} must be a finite number, got {value!r}")
            below = self.low is not None and (out <= self.low if self.low_open else out < self.low)
            if below or (self.high is not None and out > self.high):
                lo = "(" if self.low_open else "["
                raise RecipeError(f"{where}: parameter {self.name!r} must be in {lo}{_num(self.low)}, "
                                  f"{_num(self.high)}], got {value!r}")
        return out


def _factor(name: str, scope: str, default: Any = REQUIRED) -> Param:
    """A weight, lambda or scale: any sign, magnitude at most ``_FACTOR``."""
    return Param(name, float, scope, default, low=-_FACTOR, high=_FACTOR)


def _num(x: float | None) -> str:
    return "inf" if x is None else f"{x:g}"


def _as_type(kind: type, value: Any) -> Any:
    """``value`` converted to ``kind`` (bool, int, float or str), None when it is not one."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            return None
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                return None
            return int(value)
        if kind is float:
            return None if isinstance(value, bool) else float(value)
        return str(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: float(10**400)
        return None


@dataclass(frozen=True)
class Call:
    """Everything a kernel sees for one output tensor."""

    name: str
    tensors: list[torch.Tensor]  # in recipe order
    base_index: int | None
    shared: dict[str, Any]
    per_input: list[dict[str, Any]]  # parallel to tensors; non_base params absent for the base
    generators: list[torch.Generator] = field(default_factory=list)  # parallel to tensors
    stats: list[torch.Tensor | None] = field(default_factory=list)  # parallel to tensors
    sort_ties: bool = False  # recipe ``magnitude_ties: sort``: mergekit's argsort tie choice
    owned: bool = False  # the kernel may overwrite ``tensors`` (fresh buffers of the streaming merge)

    @property
    def base(self) -> torch.Tensor:
        return self.tensors[self.base_index]

    @property
    def others(self) -> list[int]:
        return [i for i in range(len(self.tensors)) if i != self.base_index]


@dataclass(frozen=True)
class Method:
    name: str
    paper: str
    kernel: Callable[[Call], torch.Tensor]
    params: tuple[Param, ...] = ()
    base: str = "ignored"  # required | optional | ignored
    min_inputs: int = 1
    max_inputs: int | None = None
    min_non_base: int | None = None
    max_non_base: int | None = None
    in_mergekit: bool = True
    random: bool = False
    statistics: str | None = None  # "fisher" | "gram": per-parent statistics file required

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def _gta(sparsify: str | None, consensus: bool):
    def run(c: Call) -> torch.Tensor:
        o = c.others
        p = [c.per_input[i] for i in o]
        s = k.sparsifier(
            sparsify,
            densities=[q["density"] for q in p],
            rescale=c.shared["rescale"],
            gammas=[q.get("gamma") for q in p],
            epsilons=[q.get("epsilon") for q in p],
            generators=[c.generators[i] for i in o] if c.generators else None,
            sort_ties=c.sort_ties,
        )
        return k.task_arithmetic(
            c.base, [c.tensors[i] for i in o], weights=[q["weight"] for q in p], sparsifier=s,
            consensus=consensus, normalize=c.shared["normalize"], lam=c.shared["lambda"],
            int8_mask=c.shared["int8_mask"], consume=c.owned,
        )

    return run


def _gta_method(name: str, paper: str, sparsify: str | None, consensus: bool, normalize: bool, rescale: bool) -> Method:
    params = [
        Param("int8_mask", bool, "shared", False),
        Param("normalize", bool, "shared", normalize),
        Param("rescale", bool, "shared", rescale),
        _factor("lambda", "shared", 1.0),
        _factor("weight", "non_base"),
        # (0, 1]: density 0 keeps nothing of a parent (drop it from the recipe instead)
        Param("density", float, "non_base", 1.0, low=0.0, high=1.0, low_open=True),
    ]
    if sparsify == "magnitude_outliers":
        params.append(Param("gamma", float, "non_base", 0.01, low=0.0, high=1.0))
    if sparsify == "della":
        params.append(Param("epsilon", float, "non_base", 0.15, low=0.0, high=1.0))
    return Method(name, paper, _gta(sparsify, consensus), tuple(params), base="required",
                  random=sparsify in ("random", "della"))


def _linear(c: Call) -> torch.Tensor:
    return k.linear(c.tensors, [p["weight"] for p in c.per_input], c.shared["normalize"])


def _slerp(c: Call) -> torch.Tensor:
    return k.slerp(c.shared["t"], c.base, c.tensors[c.others[0]])


def _nuslerp(c: Call) -> torch.Tensor:
    o = c.others
    w = [c.per_input[i]["weight"] for i in o]
    total = sum(w)
    t = 0.5 if abs(total) < 1e-6 else w[1] / total
    a, b = c.tensors[o[0]], c.tensors[o[1]]
    kw = dict(row_wise=c.shared["nuslerp_row_wise"], flatten=c.shared["nuslerp_flatten"])
    if c.base_index is None:
        return k.nuslerp(t, a, b, **kw)
    return c.base + k.nuslerp(t, a - c.base, b - c.base, **kw)


def _multislerp(c: Call) -> torch.Tensor:
    o = c.others
    base = c.base if c.base_index is not None else None
    return k.multislerp([c.tensors[i] for i in o], [c.per_input[i]["weight"] for i in o], base,
                        c.shared["normalize_weights"], c.shared["eps"])


def _model_stock(c: Call) -> torch.Tensor:
    return k.model_stock(c.base, [c.tensors[i] for i in c.others], c.shared["filter_wise"])


def _karcher(c: Call) -> torch.Tensor:
    return k.karcher(c.tensors, c.shared["max_iter"], c.shared["tol"])


def _passthrough(c: Call) -> torch.Tensor:
    scale = c.per_input[0]["scale"]
    return c.tensors[0] if scale is None else c.tensors[0] * scale


def _fisher(c: Call) -> torch.Tensor:
    return k.fisher(c.tensors, c.stats, [p["weight"] for p in c.per_input])


def _regmean(c: Call) -> torch.Tensor:
    o = c.others  # every input when there is no base_model; c.stats lists theirs, in this order
    w = [c.per_input[i]["weight"] for i in o]
    tensors = [c.tensors[i] for i in o]
    if tensors[0].dim() == 2 and all(s is not None for s in c.stats):
        merged = k.regmean(tensors, c.stats, c.shared["alpha"], w)
    else:
        merged = k.linear(tensors, w, True)  # no Gram (embeddings, norms): plain weighted mean
    lam = c.shared["lambda"]
    if c.base_index is None or lam == 1.0:
        return merged
    # base + lambda * (merged - base): task arithmetic's scaling of one change, with its rounding
    return k.task_arithmetic(c.base, [merged], weights=[1.0], lam=lam, consume=True)


def _sce(c: Call) -> torch.Tensor:
    return ks.sce(c.base, [c.tensors[i] for i in c.others], c.shared["select_topk"])


def _nearswap(c: Call) -> torch.Tensor:
    return ks.nearswap(c.shared["t"], c.base, c.tensors[c.others[0]])


def _arcee_fusion(c: Call) -> torch.Tensor:
    o = c.others[0]
    return ks.arcee_fusion(c.base, c.tensors[o], c.generators[o] if c.generators else None)


def _ram(c: Call) -> torch.Tensor:
    return ks.ram(c.base, [c.tensors[i] for i in c.others], c.shared["epsilon"])


def _ramplus_tl(c: Call) -> torch.Tensor:
    return ks.ram(c.base, [c.tensors[i] for i in c.others], c.shared["epsilon"],
                  r=c.shared["r"], alpha=c.shared["alpha"])


_TIES = "https://arxiv.org/abs/2306.01708"
_DARE = "https://arxiv.org/abs/2311.03099"
_CRUMBS = "https://arxiv.org/abs/2312.06795"
_DELLA = "https://arxiv.org/abs/2406.11617"
_RAM = "https://arxiv.org/abs/2601.13572"


def _table(methods: list[Method]) -> dict[str, Method]:
    table: dict[str, Method] = {}
    for m in methods:
        if m.name in table:
            raise ValueError(f"merge method {m.name!r} is defined twice")
        table[m.name] = m
    return table


METHODS: dict[str, Method] = _table([
    Method("linear", "https://arxiv.org/abs/2203.05482", _linear,
           (_factor("weight", "input"), Param("normalize", bool, "shared", True))),
    Method("slerp", "https://en.wikipedia.org/wiki/Slerp", _slerp, (Param("t", float, "shared", low=0.0, high=1.0),),
           base="required", min_inputs=2, max_inputs=2),
    Method("nuslerp", "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md#nuslerp", _nuslerp,
           (_factor("weight", "non_base"), Param("nuslerp_row_wise", bool, "shared", False),
            Param("nuslerp_flatten", bool, "shared", True)),
           base="optional", min_non_base=2, max_non_base=2),
    Method("multislerp", "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea", _multislerp,
           (_factor("weight", "non_base"), Param("normalize_weights", bool, "shared", True),
            Param("eps", float, "shared", 1e-8, low=0.0, high=1.0, low_open=True)),
           base="optional", min_non_base=1),
    Method("karcher", "https://en.wikipedia.org/wiki/Fr%C3%A9chet_mean", _karcher,
           (Param("max_iter", int, "shared", 10, low=1, high=MAX_ITER), Param("tol", float, "shared", 1e-5, low=0.0, high=1.0))),
    Method("model_stock", "https://arxiv.org/abs/2403.19522", _model_stock,
           (Param("filter_wise", bool, "shared", False),), base="required", min_inputs=3),
    Method("passthrough", "https://github.com/arcee-ai/mergekit#passthrough", _passthrough,
           (_factor("scale", "input", None),), max_inputs=1),
    _gta_method("task_arithmetic", "https://arxiv.org/abs/2212.04089", None, False, False, False),
    _gta_method("ties", _TIES, "magnitude", True, True, False),
    _gta_method("dare_ties", _DARE, "random", True, False, True),
    _gta_method("dare_linear", _DARE, "random", False, False, True),
    _gta_method("breadcrumbs", _CRUMBS, "magnitude_outliers", False, False, False),
    _gta_method("breadcrumbs_ties", _CRUMBS, "magnitude_outliers", True, False, False),
    _gta_method("della", _DELLA, "della", True, True, True),
    _gta_method("della_linear", _DELLA, "della", False, False, True),
    Method("sce", "https://arxiv.org/abs/2408.07990", _sce,
           # int8_mask: mergekit's scratch dtype for its masks; accepted, no effect on values
           (Param("int8_mask", bool, "shared", False),
            # [0, 1]: 0 keeps no position (the base comes back), 1 skips the selection
            Param("select_topk", float, "shared", 1.0, low=0.0, high=1.0)),
           base="required"),
    # t: a distance in weight units (mergekit's example uses 1e-4); entries closer than t swap.
    # t = 0 would keep the base, and gives NaN in float16 (1 / 1e-6 overflows, times 0)
    Method("nearswap", "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001", _nearswap,
           (Param("t", float, "shared", low=0.0, low_open=True),), base="required", min_inputs=2, max_inputs=2),
    # random: quartiles of tensors over ks.QUANTILE_SAMPLE entries come from a seeded sample
    Method("arcee_fusion", "https://github.com/arcee-ai/mergekit/blob/main/docs/merge_methods.md", _arcee_fusion,
           base="required", min_inputs=2, max_inputs=2, random=True),
    # epsilon: |delta| above it counts as a change; ramplus_tl divides by it, so (0, 1] there
    Method("ram", _RAM, _ram, (Param("epsilon", float, "shared", 1e-5, low=0.0, high=1.0),), base="required"),
    Method("ramplus_tl", _RAM, _ramplus_tl,
           (Param("epsilon", float, "shared", 1e-5, low=0.0, high=1.0, low_open=True),
            # r scales a parent's unique entries by up to 1 + r * alpha; alpha caps its shared/unique ratio
            Param("r", float, "shared", 0.1, low=0.0, high=_FACTOR),
            Param("alpha", float, "shared", 0.2, low=0.0, high=_FACTOR)),
           base="required"),
    Method("fisher", "https://arxiv.org/abs/2111.09832", _fisher,
           (_factor("weight", "input", 1.0), Param("statistics", str, "input")),
           in_mergekit=False, statistics="fisher"),
    # weight (> 0): scales the parent's Gram, i.e. how much its calibration data counts. The base
    # (optional) is no input of the least squares: lambda scales the merge's change from it.
    Method("regmean", "https://arxiv.org/abs/2212.09849", _regmean,
           (Param("weight", float, "non_base", 1.0, low=0.0, high=_FACTOR, low_open=True),
            Param("statistics", str, "non_base"),
            Param("alpha", float, "shared", 0.9, low=0.0, high=1.0),
            _factor("lambda", "shared", 1.0)),
           base="optional", in_mergekit=False, statistics="gram"),
])
