"""Recipes: mergekit-compatible YAML, parsed once into a frozen pydantic tree.

The same file runs in ``mergekit-yaml`` (which ignores our extra keys ``name``, ``seed``,
``intended_use``, ``policy``, ``pins``, ``magnitude_ties``; ``align`` changes the result, so a recipe
with it means something else to mergekit). We are stricter than mergekit: unknown keys, a misspelt
method (with the nearest name suggested), an unknown or missing parameter is a ``RecipeError``.
Checks that need the parents' configs (layer ranges) happen in ``merge.plan``, still before any
weight is read. A model reference is a directory, relative to ``base_dir`` (the current directory,
as mergekit), or a Hugging Face repo id ``org/name[@revision]`` read from the local Hub cache
(``merge.hub.resolve_model``).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from merge.bounded import KIB, decode_text, load_yaml_all, read_bytes
from merge.errors import RecipeError, UsageError, error_location
from merge.hub import ModelSource, resolve_model
from merge.methods import METHODS
from merge.recipe_limits import check_size

# A real recipe is a few KiB; one listing a hundred parents with per-layer gradients stays under
# 100 KiB. The cap is far above that yet bounds the parse: pure-Python YAML reads ~120 KiB/s here,
# so a runaway file (a log, a dump, a million model entries) is refused in about 2 s at worst.
RECIPE_LIMIT = 256 * KIB
# An evolved model's recipe holds one stage per crossover in its ancestry (tens, rarely hundreds).
MAX_STAGES = 1024

Scalar = Union[bool, int, float, str]
ScalarOrGradient = Union[Scalar, list[Scalar]]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Conditional(_Frozen):
    """``{filter: "self_attn", value: 0.3}``: applies to tensors whose name contains ``filter``."""

    value: ScalarOrGradient
    filter: str | None = None


Setting = Union[Conditional, list[Conditional], ScalarOrGradient]
Params = dict[str, Setting]


class ModelInput(_Frozen):
    model: str
    parameters: Params | None = None


class SliceSource(_Frozen):
    model: str
    layer_range: tuple[int, int]
    parameters: Params | None = None


class OutputSlice(_Frozen):
    sources: list[SliceSource]
    base_model: str | None = None
    parameters: Params | None = None


class SplitPoint(_Frozen):
    """M2N2's split point on tensor boundaries (slerp only): output tensors at positions
    ``< index`` of the merge plan's order take ``t``, the rest ``1 - t``. The plan's order is fixed
    by the parents' headers (``merge.plan``), so this names the split exactly, unlike name filters."""

    index: int
    order: Literal["plan"] = "plan"

    @model_validator(mode="after")
    def _check(self) -> "SplitPoint":
        if self.index < 0:
            raise ValueError(f"split.index must be at least 0, got {self.index}")
        return self


class Recipe(_Frozen):
    merge_method: str
    models: list[ModelInput] | None = None
    slices: list[OutputSlice] | None = None
    base_model: str | None = None
    parameters: Params | None = None
    dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    out_dtype: Literal["float32", "float16", "bfloat16", "float64"] | None = None
    tokenizer_source: str | None = None  # "base", "union" or a model path
    # mergeops keys (mergekit ignores them)
    name: str | None = None
    seed: int = 0
    intended_use: Literal["research", "commercial"] | None = None
    policy: str | None = None
    pins: dict[str, str] | None = None
    # TIES/DARE-TIES trimming keeps the k largest |delta|; entries tied with the k-th are kept
    # lowest index first ("index", O(n)) or as mergekit's unstable argsort orders them ("sort").
    magnitude_ties: Literal["index", "sort"] = "index"
    # Parents trained from different initialisations: permute every other parent's hidden units to
    # line up with the reference's before merging (Git Re-Basin weight matching, merge/align.py).
    align: Literal["weight_matching"] | None = None
    # Also permute the residual stream (embeddings, every layer's inputs and outputs, norms). Off by
    # default: on the zoo's seed pair, MLP units and heads alone gave the lower loss on both domains.
    align_residual: bool = False
    split: SplitPoint | None = None  # slerp: t before the split point, 1 - t after it (see SplitPoint)
    # not from YAML: set by parse_recipe
    base_dir: Path = Path(".")
    sha256: str = ""
    text: str = ""  # the recipe exactly as parsed (line endings kept): what a lineage stores and replays
    # not from YAML: model reference -> the directory to read it from instead of resolving it now
    # (verify replays a lineage's recorded Hub commits after a branch has moved on)
    locked: dict[str, Path] = {}
    # not from YAML: the stages before this one in a multi-stage recipe (file order); this recipe
    # is the last stage, whose output is the merge's output
    stages: tuple["Recipe", ...] = ()

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        if bool(self.models) == bool(self.slices):
            raise ValueError("give exactly one of 'models' or 'slices'")
        for s in self.slices or []:
            if not s.sources:
                raise ValueError("every slice needs at least one source")
            for src in s.sources:
                lo, hi = src.layer_range
                if lo < 0 or hi <= lo:
                    raise ValueError(f"layer_range {[lo, hi]} of {src.model} must satisfy 0 <= start < end")
            lengths = {src.layer_range[1] - src.layer_range[0] for src in s.sources}
            if len(lengths) > 1:
                raise ValueError(f"all sources of a slice must span the same number of layers, got {sorted(lengths)}")
        if self.merge_method == "regmean" and self.base_model is None and "lambda" in (self.parameters or {}):
            raise ValueError("regmean's lambda scales the merge's change from base_model; set base_model")
        if self.split is not None and self.merge_method != "slerp":
            raise ValueError(f"split applies to slerp (t before the split point, 1 - t after), not {self.merge_method}")
        refs = set(self.input_refs())
        if self.align:
            if self.slices:
                raise ValueError("align: weight_matching needs a 'models:' recipe; slices stack layers of "
                                 "different parents, which no permutation of one parent lines up")
            if len(refs) < 2:
                raise ValueError("align: weight_matching needs at least two models")
            if self.method.statistics:
                raise ValueError(f"align cannot be combined with {self.merge_method}: its statistics "
                                 "describe the parents' units in their unaligned order")
        for ref in self.pins or {}:
            if ref not in refs:
                raise ValueError(f"pins: {ref!r} is not a model of this recipe")
        if self.tokenizer_source not in (None, "base", "union") and self.tokenizer_source not in refs:
            raise ValueError(f"tokenizer_source {self.tokenizer_source!r} is not 'base', 'union' or a model of the recipe")
        return self

    def model_refs(self) -> list[str]:
        """Every parent model of the whole recipe (every stage's inputs that are not an earlier
        stage's output), in first-mention order (base first when given)."""
        made = {st.name for st in self.stages}
        refs = [r for st in (*self.stages, self) for r in st.input_refs() if r not in made]
        return list(dict.fromkeys(refs))

    def input_refs(self) -> list[str]:
        """The inputs of this stage (parents, or earlier stages' names), in first-mention order."""
        refs = [self.base_model] if self.base_model else []
        for m in self.models or []:
            refs.append(m.model)
        for s in self.slices or []:
            refs += ([s.base_model] if s.base_model else []) + [src.model for src in s.sources]
        return list(dict.fromkeys(refs))

    def statistics_files(self) -> list[Path]:
        """Every calibration statistics file the whole recipe names (each stage's ``statistics``
        parameter, wherever it is set), sorted: inputs of the merge beside its parents."""
        return sorted({path for _, path in self.statistics_refs()})

    def statistics_refs(self) -> list[tuple[str, Path]]:
        """``(value as written, path read)`` of every ``statistics`` setting of every stage."""
        def values(setting) -> list[str]:
            if isinstance(setting, Conditional):
                return values(setting.value)
            if isinstance(setting, list):
                return [v for item in setting for v in values(item)]
            return [setting] if isinstance(setting, str) else []

        found: dict[str, Path] = {}
        for st in (*self.stages, self):
            scopes = [st.parameters] + [m.parameters for m in st.models or []]
            for s in st.slices or []:
                scopes += [s.parameters] + [src.parameters for src in s.sources]
            for params in scopes:
                found.update((v, st.path_of(v)) for v in values((params or {}).get("statistics")))
        return list(found.items())

    def source_of(self, ref: str) -> ModelSource:
        """Where model reference ``ref`` is read from (raises SourceNotFound when nowhere)."""
        if ref in self.locked:
            return dataclasses.replace(resolve_model(str(self.locked[ref])), reference=ref)
        return resolve_model(ref, self.base_dir)

    def path_of(self, ref: str) -> Path:
        """The directory of a model reference; any other path (a policy, statistics) under ``base_dir``,
        or where ``locked`` points it (verify's copy of a statistics file restored from the store)."""
        if ref in self.input_refs() or ref in self.model_refs():
            return self.source_of(ref).path
        if ref in self.locked:
            return Path(self.locked[ref])
        p = Path(ref).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def method(self):
        return METHODS[self.merge_method]


_NOT_FROM_YAML = ("base_dir", "sha256", "text", "locked", "stages")


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_parameters(recipe: Recipe) -> None:
    method = recipe.method
    scopes: list[tuple[str, Params | None, bool]] = [("parameters", recipe.parameters, True)]
    for m in recipe.models or []:
        scopes.append((f"models[{m.model}].parameters", m.parameters, False))
    for i, s in enumerate(recipe.slices or []):
        scopes.append((f"slices[{i}].parameters", s.parameters, True))
        for src in s.sources:
            scopes.append((f"slices[{i}].sources[{src.model}].parameters", src.parameters, False))
    for where, params, _ in scopes:
        for key in params or {}:
            if method.param(key) is None:
                known = [p.name for p in method.params]
                raise RecipeError(
                    f"{where}: unknown parameter {key!r} for {method.name}{_suggest(key, known)} "
                    f"(known: {', '.join(known) or 'none'})"
                )
            _check_values(method.param(key), params[key], where)


def _check_values(param, setting: Any, where: str) -> None:
    """Every value a setting can take (each gradient point, each filter's value) cast and range-
    checked now, so a NaN weight or `t: .nan` is refused before any file is opened. Gradients
    interpolate between checked points, so they stay in range too."""
    if isinstance(setting, Conditional):
        _check_values(param, setting.value, where)
    elif isinstance(setting, list):
        for item in setting:
            _check_values(param, item, where)
    else:
        param.cast(setting, where)


def parse_recipe(text: str | bytes, base_dir: Path | None = None) -> Recipe:
    """Parse and validate recipe YAML; raise RecipeError (one line) on any problem.

    Given bytes (a file as read), they are decoded as strict UTF-8 and the recipe's sha256 is taken
    over exactly those bytes; given text, over its UTF-8 encoding. Several YAML documents (``---``
    between them) are a multi-stage recipe, as mergekit-multi chains merges: every stage but the
    last has a ``name``, a later stage uses that name as a model, and the last stage is the output.
    """
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if len(raw) > RECIPE_LIMIT:
        raise RecipeError(f"recipe is {len(raw):,} bytes, over the {RECIPE_LIMIT:,}-byte limit; is it the right file?")
    try:
        if isinstance(text, bytes):
            text = decode_text(text, what="recipe")
        docs = [d for d in load_yaml_all(text, what="recipe") if d is not None] or [None]
    except UsageError as exc:
        raise RecipeError(str(exc)) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise RecipeError(f"recipe: not valid YAML ({exc})") from None
    sha = hashlib.sha256(raw).hexdigest()
    base = Path(base_dir or Path.cwd())
    if len(docs) == 1:
        return _parse_doc(docs[0], text, sha, base)
    if len(docs) > MAX_STAGES:
        raise RecipeError(f"recipe has {len(docs):,} stages, over the limit of {MAX_STAGES:,}")
    stages = []
    for i, doc in enumerate(docs):
        name = doc.get("name") if isinstance(doc, dict) else None
        label = f"stage {i + 1}" + (f" ({name})" if isinstance(name, str) and name else "")
        own = yaml.safe_dump(doc, sort_keys=False)
        try:
            stages.append(_parse_doc(doc, own, hashlib.sha256(own.encode()).hexdigest(), base))
        except RecipeError as exc:
            raise RecipeError(f"{label}: {exc}") from None
    _check_stages(stages)
    return stages[-1].model_copy(update={"stages": tuple(stages[:-1]), "text": text, "sha256": sha})


def _label(i: int, stage: Recipe) -> str:
    return f"stage {i + 1}" + (f" ({stage.name})" if stage.name else "")


def _check_stages(stages: list[Recipe]) -> None:
    """Names unique, each defined before it is used and used by a later stage: a DAG in file order."""
    defined: dict[str, int] = {}
    for i, st in enumerate(stages[:-1]):
        if not st.name:
            raise RecipeError(f"stage {i + 1}: every stage but the last needs a `name`, which later stages use as a model")
        if st.name in defined:
            raise RecipeError(f"{_label(i, st)}: name {st.name!r} is already stage {defined[st.name] + 1}'s")
        defined[st.name] = i
    for i, st in enumerate(stages):
        for ref in st.input_refs():
            if ref in defined and defined[ref] >= i:
                raise RecipeError(f"{_label(i, st)}: uses stage {ref!r} before it is made; stages run in file order")
    used = {ref for st in stages[1:] for ref in st.input_refs()}
    for name, i in defined.items():
        if name not in used:
            raise RecipeError(f"{_label(i, stages[i])} is never used by a later stage; only the last stage is the output")


def _parse_doc(doc: Any, text: str, sha: str, base_dir: Path) -> Recipe:
    if not isinstance(doc, dict):
        raise RecipeError("recipe must be a YAML mapping with at least 'merge_method' and 'models' or 'slices'")
    method = doc.get("merge_method")
    if not isinstance(method, str):  # a list or mapping is unhashable: never look it up
        kind = "missing" if method is None else f"a {type(method).__name__}, not a name"
        raise RecipeError(f"merge_method is {kind}; give one of: {', '.join(METHODS)}")
    if method not in METHODS:
        raise RecipeError(
            f"unknown merge_method {method!r}{_suggest(method, METHODS)} (known: {', '.join(METHODS)})"
        )
    for key in _NOT_FROM_YAML:
        if key in doc:
            raise RecipeError(f"unknown recipe key {key!r}")
    check_size(doc)
    try:
        recipe = Recipe.model_validate({**doc, "base_dir": base_dir, "sha256": sha, "text": text})
    except ValidationError as exc:
        raise RecipeError(_one_line(exc, doc)) from None
    _check_parameters(recipe)
    return recipe


def load_recipe(path: Path, base_dir: Path | None = None) -> Recipe:
    """Read the recipe file once (bounded, regular files only) and parse exactly those bytes."""
    path = Path(path)
    try:
        data = read_bytes(path, limit=RECIPE_LIMIT, what="recipe")
    except UsageError as exc:
        raise RecipeError(str(exc)) from None
    try:
        return parse_recipe(data, base_dir)
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from None


def _one_line(exc: ValidationError, doc: dict[str, Any]) -> str:
    err = exc.errors()[0]
    loc = error_location(err["loc"], skip=("function-", "union", "list[", "tuple["))
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        known = [f for f in Recipe.model_fields if f not in _NOT_FROM_YAML] if len(err["loc"]) == 1 else []
        return f"unknown recipe key {loc!r}{_suggest(key, known)}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg
