"""Fisher and RegMean merges end to end: calibration statistics from the tiny zoo's domains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from evaluation.calibration import compute_statistics
from flows.cli import cli
from merge.recipe import parse_recipe
from merge.run import run_merge


@pytest.fixture(scope="module")
def stats(tiny_zoo, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stats")
    zoo = Path(tiny_zoo)
    out = {}
    for name in ("reverse", "sort"):
        data = zoo / "domains" / name / "train.jsonl"
        for kind in ("fisher", "gram"):
            out[f"{name}.{kind}"] = compute_statistics(zoo / "models" / name, data, kind=kind,
                                                       out=root / f"{name}.{kind}.safetensors", samples=8)
    return out


def _doc(zoo: Path, method: str, a: Path, b: Path) -> dict:
    return {"merge_method": method, "models": [
        {"model": str(zoo / "models" / "reverse"), "parameters": {"statistics": str(a)}},
        {"model": str(zoo / "models" / "sort"), "parameters": {"statistics": str(b)}}]}


def test_statistics_files_have_the_model_tensor_names(stats, tiny_zoo):
    model = load_file(Path(tiny_zoo) / "models" / "sort" / "model.safetensors")
    fisher = load_file(stats["sort.fisher"])
    assert set(fisher) == set(model) and all(fisher[k].shape == model[k].shape for k in model)
    assert all((v >= 0).all() for v in fisher.values()) and any(v.sum() > 0 for v in fisher.values())
    gram = load_file(stats["sort.gram"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert gram[q].shape == (model[q].shape[1],) * 2 and torch.allclose(gram[q], gram[q].T, atol=1e-5)


@pytest.mark.parametrize("method,kind", [("fisher", "fisher"), ("regmean", "gram")])
def test_calibrated_merge_differs_from_the_mean_but_equals_it_with_equal_statistics(stats, tiny_zoo, tmp_path, method, kind):
    zoo = Path(tiny_zoo)
    merged = run_merge(parse_recipe(yaml.safe_dump(_doc(zoo, method, stats[f"reverse.{kind}"], stats[f"sort.{kind}"]))),
                       tmp_path / "m", progress=False).out_dir
    shared = tmp_path / "shared.safetensors"  # one parent's statistics for both, without calibrate's record
    save_file(load_file(stats[f"sort.{kind}"]), str(shared))  # of the model they describe (else refused)
    same = run_merge(parse_recipe(yaml.safe_dump(_doc(zoo, method, shared, shared))), tmp_path / "s",
                     progress=False).out_dir
    a = load_file(zoo / "models" / "reverse" / "model.safetensors")
    b = load_file(zoo / "models" / "sort" / "model.safetensors")
    m, s = load_file(merged / "model.safetensors"), load_file(same / "model.safetensors")
    q = "model.layers.1.mlp.down_proj.weight"
    mean = (a[q] + b[q]) / 2
    assert not torch.allclose(m[q], mean, atol=1e-4)
    assert torch.allclose(s[q], mean, atol=1e-4)


def test_missing_statistics_file_exits_2_before_merging(tiny_zoo, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_doc(Path(tiny_zoo), "fisher", tmp_path / "nope.safetensors", tmp_path / "n2")))
    result = CliRunner().invoke(cli, ["merge", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "statistics file" in result.output and not (tmp_path / "out").exists()


def _with_base(zoo: Path, stats, **parameters) -> dict:
    doc = _doc(zoo, "regmean", stats["reverse.gram"], stats["sort.gram"])
    doc["base_model"] = str(zoo / "models" / "base")
    doc["models"].insert(0, {"model": str(zoo / "models" / "base")})
    doc["parameters"] = parameters
    return doc


def test_regmean_weights_scale_each_parents_gram(stats, tiny_zoo, tmp_path):
    zoo = Path(tiny_zoo)
    q = "model.layers.1.mlp.down_proj.weight"

    def merged(wa: float, wb: float, out: str) -> dict:
        doc = _doc(zoo, "regmean", stats["reverse.gram"], stats["sort.gram"])
        doc["models"][0]["parameters"]["weight"] = wa
        doc["models"][1]["parameters"]["weight"] = wb
        return load_file(run_merge(parse_recipe(yaml.safe_dump(doc)), tmp_path / out, progress=False).out_dir
                         / "model.safetensors")

    plain, equal, leaning = merged(1.0, 1.0, "p"), merged(0.25, 0.25, "e"), merged(1.0, 0.001, "l")
    reverse = load_file(zoo / "models" / "reverse" / "model.safetensors")
    assert torch.equal(plain[q], equal[q])  # only the ratio counts
    # nearly all of the least squares on reverse's inputs: nearly reverse's own layer
    assert (leaning[q] - reverse[q]).abs().max() < (plain[q] - reverse[q]).abs().max() / 10


def test_regmean_lambda_scales_the_change_from_the_base(stats, tiny_zoo, tmp_path):
    zoo = Path(tiny_zoo)
    plain = run_merge(parse_recipe(yaml.safe_dump(_doc(zoo, "regmean", stats["reverse.gram"], stats["sort.gram"]))),
                      tmp_path / "p", progress=False)
    one = run_merge(parse_recipe(yaml.safe_dump(_with_base(zoo, stats, **{"lambda": 1.0}))), tmp_path / "one",
                    progress=False)
    p, o = load_file(plain.out_dir / "model.safetensors"), load_file(one.out_dir / "model.safetensors")
    assert set(p) == set(o) and all(torch.equal(p[n], o[n]) for n in p)  # the base is no input of the least squares
    scaled = run_merge(parse_recipe(yaml.safe_dump(_with_base(zoo, stats, **{"lambda": 1.5}))), tmp_path / "s",
                       progress=False)
    base = load_file(zoo / "models" / "base" / "model.safetensors")
    s = load_file(scaled.out_dir / "model.safetensors")
    for name in ("model.layers.1.mlp.down_proj.weight", "model.norm.weight"):
        assert torch.allclose(s[name], base[name] + 1.5 * (p[name] - base[name]), atol=1e-5)


def test_regmean_lambda_without_a_base_and_a_zero_weight_are_refused(stats, tiny_zoo, tmp_path):
    zoo = Path(tiny_zoo)
    doc = _doc(zoo, "regmean", stats["reverse.gram"], stats["sort.gram"])
    doc["parameters"] = {"lambda": 1.2}
    bad = tmp_path / "lambda.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(cli, ["merge", str(bad), "--out", str(tmp_path / "o1")])
    assert result.exit_code == 2 and "set base_model" in result.output and not (tmp_path / "o1").exists()
    doc = _doc(zoo, "regmean", stats["reverse.gram"], stats["sort.gram"])
    doc["models"][1]["parameters"]["weight"] = 0
    bad.write_text(yaml.safe_dump(doc))
    result = CliRunner().invoke(cli, ["merge", str(bad), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "'weight'" in result.output and not (tmp_path / "o2").exists()


def test_a_calibrated_merge_records_its_statistics_files_by_hash_through_every_stage(stats, tiny_zoo, tmp_path):
    from merge.manifest import sha256_file

    zoo = Path(tiny_zoo)
    a, b = stats["reverse.gram"], stats["sort.gram"]
    want = [{"path": str(p.resolve()), "sha256": sha256_file(p), "size": p.stat().st_size} for p in sorted((a, b))]
    one = parse_recipe(yaml.safe_dump(_doc(zoo, "regmean", a, b)))
    assert one.statistics_files() == sorted((a, b))
    assert run_merge(one, tmp_path / "one", progress=False).manifest["statistics"] == want
    # The statistics of an earlier stage are inputs of the output too.
    staged = parse_recipe(yaml.safe_dump_all([{**_doc(zoo, "regmean", a, b), "name": "rm"}, {
        "merge_method": "linear", "models": [{"model": "rm", "parameters": {"weight": 0.5}},
                                             {"model": str(zoo / "models" / "base"), "parameters": {"weight": 0.5}}]}]))
    assert staged.statistics_files() == sorted((a, b))
    result = run_merge(staged, tmp_path / "staged", progress=False)
    assert result.manifest["statistics"] == want and list(result.statistics) == want
    plain = parse_recipe(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": str(zoo / "models" / n), "parameters": {"weight": 0.5}} for n in ("reverse", "sort")]}))
    assert plain.statistics_files() == []
    assert "statistics" not in run_merge(plain, tmp_path / "plain", progress=False).manifest


def test_the_merge_cache_key_changes_with_the_statistics_bytes(stats, tiny_zoo, tmp_path):
    from flows.tasks import merge_cache_key, statistics_ids
    from merge.errors import RecipeError

    zoo = Path(tiny_zoo)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(stats["reverse.gram"].read_bytes())
    b.write_bytes(stats["sort.gram"].read_bytes())
    recipe = parse_recipe(yaml.safe_dump(_doc(zoo, "regmean", a, b)))
    before = merge_cache_key(recipe.sha256, ["p1", "p2"], "code", statistics_ids(recipe))
    assert before != merge_cache_key(recipe.sha256, ["p1", "p2"], "code")
    a.write_bytes(stats["sort.gram"].read_bytes())  # recalibrated in place: same path, same recipe bytes
    assert merge_cache_key(recipe.sha256, ["p1", "p2"], "code", statistics_ids(recipe)) != before
    a.unlink()
    with pytest.raises(RecipeError, match="statistics file .*a.safetensors not found"):
        statistics_ids(recipe)


def test_statistics_of_another_version_of_the_parent_are_refused_and_nothing_is_written(tiny_zoo, tmp_path):
    import shutil

    from safetensors import safe_open

    from merge.errors import StaleStatistics
    from merge.manifest import content_id, sha256_file

    zoo = Path(tiny_zoo)
    sort = tmp_path / "sort"
    shutil.copytree(zoo / "models" / "sort", sort)
    data = zoo / "domains" / "sort" / "train.jsonl"
    a = compute_statistics(zoo / "models" / "reverse", zoo / "domains" / "reverse" / "train.jsonl", kind="gram",
                           out=tmp_path / "reverse.gram.safetensors", samples=4)
    b = compute_statistics(sort, data, kind="gram", out=tmp_path / "sort.gram.safetensors", samples=4)
    with safe_open(str(b), "pt") as fh:
        meta = fh.metadata()
    assert meta == {"mergeops.statistics": "gram", "mergeops.model_content_id": content_id(sort),
                    "mergeops.data_sha256": sha256_file(data), "mergeops.samples": "4"}
    doc = _doc(zoo, "regmean", a, b)
    doc["models"][1]["model"] = str(sort)
    recipe = parse_recipe(yaml.safe_dump(doc))
    run_merge(recipe, tmp_path / "ok", progress=False)

    weights = load_file(sort / "model.safetensors")  # the parent is updated after its calibration
    q = "model.layers.0.self_attn.q_proj.weight"
    weights[q] = weights[q] * 1.01
    save_file(weights, str(sort / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(StaleStatistics, match=r"sort\.gram\.safetensors: statistics computed from content .* but "
                                              r".*sort holds content .*run `mergeops calibrate` on it again"):
        run_merge(recipe, tmp_path / "stale", progress=False)
    assert not (tmp_path / "stale").exists() and [p.name for p in tmp_path.iterdir() if "stale" in p.name] == []
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(doc))
    done = CliRunner().invoke(cli, ["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "stale")])
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.exit_code == 2 and len(errors) == 1 and errors[0].endswith("run `mergeops calibrate` on it again")
    assert "changed since" in errors[0]

    # Statistics written without that record (by other tools) are taken as they are.
    save_file(load_file(b), str(b))
    run_merge(recipe, tmp_path / "unrecorded", progress=False)
