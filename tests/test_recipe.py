"""Recipe schema: mergekit YAML plus mergeops keys, frozen, validated before any tensor is read."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from merge.errors import RecipeError
from merge.methods import METHODS
from merge.params import evaluate, resolve
from merge.recipe import load_recipe, parse_recipe

TIES = """
merge_method: ties
base_model: base
models:
  - model: base
  - model: a
    parameters: {weight: 0.5, density: [0.2, 0.8]}
parameters: {normalize: true}
name: demo
seed: 3
intended_use: commercial
policy: policies/default.yaml
pins: {a: abc}
"""


def test_parses_mergekit_yaml_with_mergeops_keys(tmp_path):
    (tmp_path / "a").mkdir()  # a model reference resolves to a directory that exists
    r = parse_recipe(TIES, tmp_path)
    assert r.model_refs() == ["base", "a"]
    assert (r.name, r.seed, r.intended_use, r.pins) == ("demo", 3, "commercial", {"a": "abc"})
    assert r.path_of("a") == tmp_path / "a"
    assert len(r.sha256) == 64 and r.sha256 != parse_recipe(TIES + "\n# x\n", tmp_path).sha256
    with pytest.raises(ValidationError):
        r.seed = 4  # frozen


def test_paths_resolve_against_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "r.yaml").write_text(TIES)
    (tmp_path / "cwd" / "a").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.path_of("a") == tmp_path / "cwd" / "a"
    assert recipe.path_of("policies/default.yaml") == tmp_path / "cwd" / "policies/default.yaml"  # not a model


@pytest.mark.parametrize("text,needle", [
    ("merge_method: slerpp\nmodels: [{model: a}]", "did you mean 'slerp'"),
    ("merge_method: ties\nmodels: [{model: a}]\ndtpye: float32", "dtpye"),
    ("merge_method: ties\nmodels: [{model: a}]\ndtype: float8", "dtype"),
    ("merge_method: ties\nmodels: [{model: a}]\nslices: [{sources: [{model: a, layer_range: [0, 1]}]}]", "exactly one"),
    ("merge_method: ties\nbase_model: a\nmodels: [{model: a, parameters: {densty: 0.5}}]", "did you mean 'density'"),
    ("merge_method: linear\nmodels: [{model: a}]\npins: {b: x}", "not a model"),
    ("merge_method: linear\nmodels: [{model: a}]\ntokenizer_source: other", "tokenizer_source"),
    ("merge_method: passthrough\nslices: [{sources: [{model: a, layer_range: [3, 1]}]}]", "layer_range"),
    ("- just a list", "mapping"),
])
def test_recipe_errors_are_one_line(text, needle):
    with pytest.raises(RecipeError) as exc:
        parse_recipe(text)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_gradients_interpolate_like_mergekit():
    p = METHODS["slerp"].param("t")  # [0, 1], endpoints included
    assert evaluate([0.0, 1.0], "x", 0.25, p, "w") == 0.25
    assert evaluate([0.0, 1.0, 0.0], "x", 0.75, p, "w") == pytest.approx(0.5)
    assert evaluate([0.2, 0.8], "x", 1.0, p, "w") == pytest.approx(0.8)
    b = METHODS["ties"].param("normalize")
    assert evaluate([True, False], "x", 0.9, b, "w") is True  # discrete: values[int(t * (n - 1))]


def test_filters_and_precedence():
    r = parse_recipe("""
merge_method: ties
base_model: b
models:
  - model: b
  - model: a
    parameters:
      weight: [{filter: mlp, value: 0.3}, {value: 0.7}]
parameters: {density: 0.5, weight: 9}
""")
    w = METHODS["ties"].param("weight")
    src = r.models[1].parameters
    assert resolve(w, [src, r.parameters], "model.layers.0.mlp.up_proj.weight", 0, "a") == 0.3
    assert resolve(w, [src, r.parameters], "model.layers.0.self_attn.q_proj.weight", 0, "a") == 0.7
    assert resolve(w, [None, r.parameters], "x", 0, "a") == 9.0
    with pytest.raises(RecipeError, match="missing required parameter 'weight'"):
        resolve(w, [None, None], "x", 0, "a")


def test_every_method_parses_with_its_required_parameters():
    for name, m in METHODS.items():
        params = {p.name: ("s.safetensors" if p.type is str else 0.5) for p in m.params if p.required}
        doc = {"merge_method": name, "base_model": "b", "models": [{"model": "b"}, {"model": "a", "parameters": params}]}
        assert parse_recipe(yaml.safe_dump(doc)).method is m
