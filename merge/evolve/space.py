"""A recipe's search space for CMA-ES and random search: per-layer-block values of its parameters.

Each tuned parameter becomes a gradient of ``blocks`` points (mergekit's list syntax, interpolated
over the layer stack; tensors outside the layers take the first point), as Sakana's evomerge and
mergekit-evolve tune them. Given the parents' tensor names (``tensor_names``), it is tuned per
tensor kind as well: one gradient per kind of layer tensor (the name's first part after the layer
index: ``self_attn``, ``mlp``, ``input_layernorm``; GPT-2's ``attn``, ``ln_1``…) and one value per
tensor outside the layers (embeddings, final norm, head), written as mergekit's ``{filter, value}``
lists. The filters are checked to pick out exactly their own tensors (first match wins), else the
space stays per block only.

- task_arithmetic, ties, dare_*, breadcrumbs*, della*: ``weight`` of every non-base model, and its
  ``density`` where the method sparsifies;
- linear: ``weight`` of every model; slerp: the shared ``t``;
- regmean and fisher (data-aware, with each parent's statistics file): ``weight`` of every non-base
  model (how much its calibration data counts), regmean's ``alpha`` and, with a base_model, its
  ``lambda`` (the scale of the merge's change from the base).

``to_doc(x)`` writes the vector back into the recipe's own YAML document, so every candidate is an
ordinary recipe that ``mergeops merge`` runs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from merge.errors import RecipeError
from merge.recipe import Recipe
from merge.bounded import load_yaml

_DENSITY_LOW = 0.05  # a density near 0 drops a parent entirely (and 0 is refused by the recipe)
_WEIGHT_LOW = 0.02  # regmean / fisher: only weight ratios count, and regmean refuses 0
_ALPHA = (0.5, 0.99)  # regmean's alpha: how much of each Gram's off-diagonal is kept (1 can be singular)
_LAMBDA = (0.5, 2.0)  # regmean's lambda: from half the merge's change from the base to twice it
DIGITS = 6  # values are rounded so recipes stay readable; the search sees the rounded values too
_TUNABLE = ("linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs",
            "breadcrumbs_ties", "della", "della_linear", "regmean", "fisher")
_DATA_AWARE = ("regmean", "fisher")


@dataclass(frozen=True)
class Dim:
    model: str | None  # None: a recipe-level parameter (slerp's t)
    param: str
    low: float
    high: float
    start: float


@dataclass(frozen=True)
class Group:
    filter: str | None  # None: every tensor (no kinds)
    points: int  # gradient points: ``blocks`` for layer kinds, 1 outside the layers


class RecipeSpace:
    def __init__(self, recipe: Recipe, blocks: int = 4, tensor_names: list[str] | None = None,
                 config: dict | None = None):
        if recipe.merge_method not in _TUNABLE:
            raise RecipeError(f"evolve cannot tune {recipe.merge_method!r} recipes by their parameters; use one of: "
                              f"{', '.join(_TUNABLE)} or search with m2n2, which crosses any recipe's merge with its parents")
        if recipe.slices:
            raise RecipeError("evolve tunes recipes with 'models'; write the slices as models")
        if blocks < 1:
            raise RecipeError(f"blocks must be at least 1, got {blocks}")
        self.recipe, self.blocks = recipe, blocks
        self.groups = _kinds(tensor_names, config or {}, blocks) if tensor_names else [Group(None, blocks)]
        self.doc = load_yaml(recipe.text, what="recipe")
        method = recipe.method
        self.params: list[Dim] = []
        if recipe.merge_method == "slerp":
            self.params.append(Dim(None, "t", 0.0, 1.0, _scalar(recipe.parameters, "t", 0.5)))
        elif recipe.merge_method in _DATA_AWARE:
            models = [m for m in recipe.models if m.model != recipe.base_model]
            weights = [max(_scalar(m.parameters, "weight", 1.0), _WEIGHT_LOW) for m in models]
            for m, w in zip(models, weights):  # only ratios count: start with the largest mid-range
                self.params.append(Dim(m.model, "weight", _WEIGHT_LOW, 1.0, 0.5 * w / max(weights)))
            if recipe.merge_method == "regmean":
                self.params.append(Dim(None, "alpha", *_ALPHA, _scalar(recipe.parameters, "alpha", 0.9)))
                if recipe.base_model is not None:
                    self.params.append(Dim(None, "lambda", *_LAMBDA, _scalar(recipe.parameters, "lambda", 1.0)))
        else:
            models = [m for m in recipe.models if recipe.merge_method == "linear" or m.model != recipe.base_model]
            sparsifies = recipe.merge_method not in ("linear", "task_arithmetic")
            for m in models:
                self.params.append(Dim(m.model, "weight", 0.0, 1.0, _scalar(m.parameters, "weight", 0.5)))
                if sparsifies and method.param("density") is not None:
                    self.params.append(Dim(m.model, "density", _DENSITY_LOW, 1.0,
                                           _scalar(m.parameters, "density", 0.5)))

    @property
    def per_param(self) -> int:
        return sum(g.points for g in self.groups)

    @property
    def dim(self) -> int:
        return len(self.params) * self.per_param

    def bounds(self) -> np.ndarray:
        """[dim, 2]: each parameter's range, repeated for its groups' points."""
        return np.array([(p.low, p.high) for p in self.params for _ in range(self.per_param)], dtype=float)

    def x0(self) -> np.ndarray:
        """The recipe's own values (flat), clipped into the box: where CMA-ES starts."""
        return np.array([min(max(p.start, p.low), p.high) for p in self.params for _ in range(self.per_param)])

    def to_doc(self, x) -> dict:
        """The recipe document with the tuned parameters set to ``x`` (rounded, clipped to bounds)."""
        x = np.asarray(x, dtype=float)
        if x.shape != (self.dim,):
            raise ValueError(f"expected {self.dim} values, got shape {x.shape}")
        doc = copy.deepcopy(self.doc)
        n = self.per_param
        for i, p in enumerate(self.params):
            values = [round(float(min(max(v, p.low), p.high)), DIGITS) for v in x[i * n:(i + 1) * n]]
            setting, at = [], 0
            for g in self.groups:
                point = values[at] if g.points == 1 else values[at:at + g.points]
                at += g.points
                setting.append(point if g.filter is None else {"filter": g.filter, "value": point})
            setting = setting[0] if self.groups[0].filter is None else setting
            if p.model is None:
                doc.setdefault("parameters", {})
                doc["parameters"] = {**(doc["parameters"] or {}), p.param: setting}
            else:
                entry = next(m for m in doc["models"] if m["model"] == p.model)
                entry["parameters"] = {**(entry.get("parameters") or {}), p.param: setting}
        return doc


def _kinds(names: list[str], config: dict, blocks: int) -> list[Group]:
    """The tensor-kind groups of ``names``, or one plain group when the filters would be ambiguous."""
    from merge.structure import infer_structure

    structure = infer_structure(names, config)
    kinds: dict[str, None] = {}
    outside: list[str] = []
    for name in names:
        where = structure.locate(name)
        if where is None:
            outside.append(name)
        else:
            kinds[f".{where[2].split('.')[0]}."] = None
    if not kinds:
        return [Group(None, blocks)]
    groups = [Group(k, blocks) for k in kinds] + [Group(n, 1) for n in outside]
    for name in names:  # the first filter that matches must be the tensor's own group
        where = structure.locate(name)
        own = name if where is None else f".{where[2].split('.')[0]}."
        first = next((g.filter for g in groups if g.filter in name), None)
        if first != own:
            return [Group(None, blocks)]
    return groups


def _scalar(params, name: str, default: float) -> float:
    """The recipe's value of ``name`` when it is one plain number, else ``default``."""
    value = (params or {}).get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default
