"""Hostile recipes and output paths through `mergeops merge`: each is refused with exit 2 (bad
input) on exactly one `error:` line, no traceback, and nothing written at --out."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from flows.cli import cli
from merge.errors import CompatibilityError
from merge.layout import read_layout
from merge.plan import plan_merge
from merge.recipe import RECIPE_LIMIT, load_recipe
from merge.recipe_limits import MAX_MODELS
from merge.synthetic import write_llama

BIAS = "self_attn.relative_attention_bias.weight"  # as T5 holds it: in block 0 only


def _add(model: Path, tensors: dict[str, torch.Tensor]) -> Path:
    f = model / "model.safetensors"
    save_file({**load_file(f), **tensors}, str(f), metadata={"format": "pt"})
    return model


@pytest.fixture(scope="module")
def trio(tmp_path_factory) -> Path:
    """base, a, b: two layers each; layer 0 alone holds a relative-attention bias, and every parent
    has an empty (0 x 8) buffer."""
    root = tmp_path_factory.mktemp("hostile")
    base = write_llama(root / "base", seed=0, layers=2, hidden=32, intermediate=64, vocab=64)
    write_llama(root / "a", seed=1, base=base, layers=2, hidden=32, intermediate=64, vocab=64)
    write_llama(root / "b", seed=2, base=base, layers=2, hidden=32, intermediate=64, vocab=64)
    for i, name in enumerate(("base", "a", "b")):
        _add(root / name, {f"model.layers.0.{BIAS}": torch.full((8, 4), 0.1 * (i + 1)),
                           "model.empty_buffer": torch.empty((0, 8))})
    return root


def _merge(tmp: Path, recipe: str | bytes | Path, out: Path | None = None):
    if not isinstance(recipe, Path):
        path = tmp / "recipe.yaml"
        path.write_bytes(recipe if isinstance(recipe, bytes) else recipe.encode())
        recipe = path
    out = tmp / "out" if out is None else out
    return CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(out)]), out


def _refused(result, needles=(), code: int = 2) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _no_output_beside(tmp: Path, *keep: str) -> None:
    assert sorted(p.name for p in tmp.iterdir()) == sorted(["recipe.yaml", *keep])


def _recipe(root: Path, method: str = "task_arithmetic", params_a: str = "{weight: 0.5}", params: str = "{}") -> str:
    return (f"merge_method: {method}\nbase_model: {root / 'base'}\nparameters: {params}\n"
            f"models:\n  - model: {root / 'base'}\n  - model: {root / 'a'}\n    parameters: {params_a}\n"
            f"  - model: {root / 'b'}\n    parameters: {{weight: 0.5}}\n")


# --- --out --------------------------------------------------------------------------------------

def test_out_symlink_to_a_directory_is_refused_before_merging(trio, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (tmp_path / "out").symlink_to(target)
    result, out = _merge(tmp_path, _recipe(trio))
    _refused(result, ["symbolic link", str(out)])
    assert out.is_symlink() and list(target.iterdir()) == []
    _no_output_beside(tmp_path, "out", "target")


def test_out_dangling_symlink_is_refused(trio, tmp_path):
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    result, out = _merge(tmp_path, _recipe(trio))
    _refused(result, ["symbolic link"])
    assert out.is_symlink() and not (tmp_path / "nowhere").exists()
    _no_output_beside(tmp_path, "out")


def test_out_inside_a_file_is_refused(trio, tmp_path):
    (tmp_path / "file").write_text("x")
    result, _ = _merge(tmp_path, _recipe(trio), tmp_path / "file" / "out")
    _refused(result, ["not a directory"])
    _no_output_beside(tmp_path, "file")


def test_out_that_is_a_file_is_refused(trio, tmp_path):
    (tmp_path / "out").write_text("keep")
    result, out = _merge(tmp_path, _recipe(trio))
    _refused(result, ["not empty"])
    assert out.read_text() == "keep"


@pytest.mark.parametrize("where", ["read-only", "proc"])
def test_out_where_nobody_may_write_is_refused(trio, tmp_path, where):
    if where == "read-only":
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop us")
        out = locked / "out"
    else:
        out = Path("/proc/self/mergeops-out")  # unwritable even for root
    result, _ = _merge(tmp_path, _recipe(trio), out)
    _refused(result, ["cannot"])
    assert not out.exists()


# --- recipe values -------------------------------------------------------------------------------

BAD_VALUES = {
    "nan weight": ({"params_a": "{weight: .nan}"}, ["'weight'", "finite", "models[", "/a]"]),
    "inf weight": ({"params_a": "{weight: -.inf}"}, ["'weight'", "finite", "/a]"]),
    "1e308 weight": ({"params_a": "{weight: 1.0e+308}"}, ["'weight'", "[-1000, 1000]", "/a]"]),
    "weight as the string nan": ({"params_a": "{weight: 'nan'}"}, ["'weight'", "finite"]),
    "nan in a gradient": ({"params_a": "{weight: [0.1, .nan]}"}, ["'weight'", "finite", "/a]"]),
    "inf in a filter": ({"params_a": "{weight: [{filter: mlp, value: .inf}, {value: 1}]}"}, ["'weight'", "/a]"]),
    "lambda inf": ({"params": "{lambda: .inf}"}, ["'lambda'", "finite", "parameters"]),
    "dare nan density": ({"method": "dare_ties", "params_a": "{weight: 0.5, density: .nan}"}, ["'density'", "/a]"]),
    "density zero": ({"method": "ties", "params_a": "{weight: 0.5, density: 0}"}, ["'density'", "(0, 1]"]),
    "density above one": ({"method": "ties", "params_a": "{weight: 0.5, density: 1.5}"}, ["'density'", "(0, 1]"]),
    "della nan epsilon": ({"method": "della", "params_a": "{weight: 0.5, epsilon: .nan}"}, ["'epsilon'", "/a]"]),
    "breadcrumbs gamma": ({"method": "breadcrumbs", "params_a": "{weight: 0.5, gamma: 2}"}, ["'gamma'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_non_finite_or_out_of_range_numbers_are_one_line(trio, tmp_path, case):
    kwargs, needles = BAD_VALUES[case]
    result, out = _merge(tmp_path, _recipe(trio, **kwargs))
    _refused(result, needles)
    assert not out.exists()
    _no_output_beside(tmp_path)


@pytest.mark.parametrize("params,needle", [
    ("{t: .nan}", "'t'"), ("{t: 1.5}", "'t'"),
])
def test_slerp_t_must_be_finite_in_unit_interval(trio, tmp_path, params, needle):
    text = (f"merge_method: slerp\nbase_model: {trio / 'base'}\nparameters: {params}\n"
            f"models: [{{model: {trio / 'base'}}}, {{model: {trio / 'a'}}}]\n")
    _refused(_merge(tmp_path, text)[0], [needle, "parameters"])


@pytest.mark.parametrize("params,needle", [
    ("{max_iter: 1.0e+12}", "[1, 1000]"), ("{max_iter: .inf}", "'max_iter'"), ("{tol: .nan}", "'tol'"),
    ("{max_iter: 0}", "[1, 1000]"),
])
def test_karcher_iterations_are_bounded(trio, tmp_path, params, needle):
    text = (f"merge_method: karcher\nparameters: {params}\n"
            f"models: [{{model: {trio / 'a'}}}, {{model: {trio / 'b'}}}]\n")
    _refused(_merge(tmp_path, text)[0], [needle])


@pytest.mark.parametrize("value", ["[linear]", "{linear: 1}", "7", "null"])
def test_merge_method_that_is_not_a_name_is_one_line(trio, tmp_path, value):
    text = f"merge_method: {value}\nmodels: [{{model: {trio / 'a'}, parameters: {{weight: 1}}}}]\n"
    _refused(_merge(tmp_path, text)[0], ["merge_method"])


def test_finite_inputs_turned_to_nan_by_the_kernel_are_refused_naming_the_tensor(trio, tmp_path):
    """linear with weights summing to zero divides by zero: a silent NaN model before."""
    text = (f"merge_method: linear\nmodels:\n  - {{model: {trio / 'a'}, parameters: {{weight: 1}}}}\n"
            f"  - {{model: {trio / 'b'}, parameters: {{weight: -1}}}}\n")
    line = _refused(_merge(tmp_path, text)[0], ["NaN or inf", "tensor 'model."])
    assert "finite inputs" in line
    _no_output_beside(tmp_path)


# --- recipe files ------------------------------------------------------------------------------

def test_recipe_in_utf16_or_invalid_utf8_is_one_line(trio, tmp_path):
    _refused(_merge(tmp_path, _recipe(trio).encode("utf-16"))[0], ["UTF-16"])
    _refused(_merge(tmp_path, b"merge_method: linear\n# \xff\xfe\n")[0], ["not UTF-8"])


@pytest.mark.parametrize("source", ["/dev/zero", "directory", "fifo"])
def test_recipe_that_is_not_a_regular_file_is_never_read(trio, tmp_path, source):
    path = Path(source)
    if source == "directory":
        path = tmp_path / "dir.yaml"
        path.mkdir()
    elif source == "fifo":
        path = tmp_path / "fifo.yaml"
        os.mkfifo(path)  # opening it to read would block forever
    result, out = _merge(tmp_path, path)
    _refused(result, ["regular file" if source != "directory" else "directory"])
    assert not out.exists()


def test_oversized_recipe_is_refused_unparsed(trio, tmp_path):
    big = tmp_path / "recipe.yaml"
    with big.open("wb") as fh:
        fh.write(_recipe(trio).encode())
        fh.truncate(50 * 1024 * 1024)  # sparse: 50 MB on paper
    _refused(_merge(tmp_path, big)[0], ["52,428,800 bytes", "limit"])


def test_a_recipe_naming_too_many_models_is_refused_before_validation(trio, tmp_path):
    entry = f"  - {{model: {trio / 'a'}, parameters: {{weight: 1}}}}\n"
    text = "merge_method: linear\nmodels:\n" + entry * (MAX_MODELS + 1)
    assert len(text.encode()) < RECIPE_LIMIT
    _refused(_merge(tmp_path, text)[0], ["models", f"{MAX_MODELS:,}"])


def test_anchors_repeated_across_slices_and_sources_are_refused(trio, tmp_path):
    src = ", ".join([f"{{model: {trio / 'a'}, layer_range: [0, 1]}}"] * 40)
    text = (f"merge_method: passthrough\nx: &s {{sources: [{src}]}}\ny: &t [{', '.join(['*s'] * 40)}]\n"
            f"slices: [{', '.join(['*t'] * 40)}]\n")
    assert len(text) < 16_000
    _refused(_merge(tmp_path, text)[0], ["recipe"])


def test_sha256_is_taken_over_the_bytes_read(trio, tmp_path):
    data = b"\xef\xbb\xbf" + _recipe(trio).replace("\n", "\r\n").encode()  # BOM and CRLF, as editors save
    (tmp_path / "r.yaml").write_bytes(data)
    assert load_recipe(tmp_path / "r.yaml").sha256 == hashlib.sha256(data).hexdigest()


# --- layers that hold different tensors ----------------------------------------------------------

def test_a_tensor_only_in_layer_0_is_merged_there(trio, tmp_path):
    result, out = _merge(tmp_path, _recipe(trio))
    assert result.exit_code == 0, result.output
    names = set(read_layout(out).tensors)
    assert f"model.layers.0.{BIAS}" in names and f"model.layers.1.{BIAS}" not in names
    merged = load_file(out / "model.safetensors")
    assert torch.allclose(merged[f"model.layers.0.{BIAS}"], torch.full((8, 4), 0.1 + 0.5 * 0.1 + 0.5 * 0.2))
    assert merged["model.empty_buffer"].shape == (0, 8)


def test_slices_pairing_layers_of_different_tensors_fail_at_plan_time(trio, tmp_path):
    text = (f"merge_method: linear\nslices:\n  - sources:\n"
            f"      - {{model: {trio / 'a'}, layer_range: [0, 1], parameters: {{weight: 1}}}}\n"
            f"      - {{model: {trio / 'b'}, layer_range: [1, 2], parameters: {{weight: 1}}}}\n")
    (tmp_path / "recipe.yaml").write_text(text)
    with pytest.raises(CompatibilityError, match=rf"{trio / 'b'}: tensor 'model\.layers\.1\.{BIAS}' is missing"):
        plan_merge(load_recipe(tmp_path / "recipe.yaml"))  # headers only: no weight is read
    result, out = _merge(tmp_path, text)
    _refused(result, [BIAS, str(trio / "b")])
    assert not out.exists()


@pytest.mark.parametrize("method", ["della", "della_linear", "dare_ties", "ties", "breadcrumbs"])
def test_sparsifying_methods_merge_an_empty_tensor(trio, tmp_path, method):
    result, out = _merge(tmp_path, _recipe(trio, method=method, params_a="{weight: 0.5, density: 0.5}"))
    assert result.exit_code == 0, result.output
    assert load_file(out / "model.safetensors")["model.empty_buffer"].shape == (0, 8)
