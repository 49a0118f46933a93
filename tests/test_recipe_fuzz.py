"""Fuzz the recipe parser: whatever the document, ``parse_recipe`` returns a Recipe or raises a
mergeops error (one line, exit code 2); never a TypeError, a traceback or an unbounded parse.

Bounded by default (200 examples per test); set MERGEOPS_FUZZ_EXAMPLES for a long run, e.g.
``MERGEOPS_FUZZ_EXAMPLES=100000 pytest tests/test_recipe_fuzz.py`` overnight.
"""

from __future__ import annotations

import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from merge.errors import MergeopsError
from merge.methods import METHODS
from merge.recipe import Recipe, parse_recipe

EXAMPLES = int(os.environ.get("MERGEOPS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

_KEYS = ["merge_method", "models", "slices", "base_model", "parameters", "dtype", "out_dtype", "tokenizer_source",
         "name", "seed", "intended_use", "policy", "pins", "magnitude_ties", "model", "sources", "layer_range",
         "filter", "value", "base_dir", "sha256"]
_PARAMS = sorted({p.name for m in METHODS.values() for p in m.params})
_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-10**30, max_value=10**30)
            | st.floats() | st.text(max_size=12) | st.sampled_from(list(METHODS) + _PARAMS + ["nan", "1e308"]))
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(_KEYS + _PARAMS) | st.text(max_size=6), inner, max_size=4),
    max_leaves=25,
)
_params = st.dictionaries(st.sampled_from(_PARAMS), _values | st.floats(), max_size=4)
_model = st.fixed_dictionaries({"model": st.text(min_size=1, max_size=8)}, optional={"parameters": _params})
_source = st.fixed_dictionaries({"model": st.text(min_size=1, max_size=8),
                                 "layer_range": st.lists(st.integers(-2, 10**20), min_size=0, max_size=3)},
                                optional={"parameters": _params})
_recipes = st.fixed_dictionaries(
    {"merge_method": st.sampled_from(list(METHODS)) | _values},
    optional={"models": st.lists(_model, max_size=4), "slices": st.lists(st.fixed_dictionaries(
        {"sources": st.lists(_source, max_size=3)}, optional={"parameters": _params}), max_size=3),
        "base_model": st.text(max_size=8), "parameters": _params, "seed": _values, "dtype": _values,
        "tokenizer_source": _values, "pins": _values, "junk": _values},
)


def _parses_or_refuses(doc) -> None:
    try:
        recipe = parse_recipe(doc)
    except MergeopsError as exc:
        assert exc.exit_code == 2 and "\n" not in str(exc).strip()
    else:
        assert isinstance(recipe, Recipe)


@FUZZ
@given(_recipes)
def test_recipe_shaped_documents(doc):
    _parses_or_refuses(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(_values)
def test_any_yaml_value(doc):
    _parses_or_refuses(yaml.safe_dump(doc))


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes(data):
    _parses_or_refuses(data)
