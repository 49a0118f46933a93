"""Evaluation end to end on the tiny zoo: real lm-eval in memory, the cache, leakage, gates, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from evaluation import lmeval_runner
from evaluation.errors import ResultsInvalid
from evaluation.leakage import declared_canaries, read_card
from evaluation.results import validate_results
from evaluation.roles import resolve_models
from evaluation.run import ModelRef, evaluate_models
from evaluation.suites import load_suite, materialize
from merge.errors import UsageError
from merge.manifest import MANIFEST_NAME, canonical_json, content_id, file_entries

PASS = {"audit_verdict": "pass", "license_verdict": "pass"}


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="session")
def averaged(tiny_zoo, tmp_path_factory) -> Path:
    """A stand-in merged model: the mean of the reverse and sort specialists, with a manifest naming them."""
    parents = [tiny_zoo / "models" / "reverse", tiny_zoo / "models" / "sort"]
    out = tmp_path_factory.mktemp("merged") / "avg"
    shutil.copytree(parents[0], out, ignore=shutil.ignore_patterns("*.safetensors", "README.md"))
    a, b = (load_file(p / "model.safetensors") for p in parents)
    save_file({k: ((a[k] + b[k]) / 2).contiguous() for k in a}, out / "model.safetensors", metadata={"format": "pt"})
    manifest = {"content_id": content_id(out), "files": [e.model_dump() for e in file_entries(out)],
                "recipe_sha256": "0" * 64, "parents": [{"path": str(p), "content_id": content_id(p)} for p in parents]}
    (out / MANIFEST_NAME).write_bytes(canonical_json(manifest))
    return out


@pytest.fixture(scope="session")
def canary_model(tiny_zoo, tmp_path_factory) -> Path:
    """The proprietary specialist trained further on its own canaries until it has memorised them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("canary") / "proprietary-memorised"
    shutil.copytree(tiny_zoo / "models" / "proprietary", out)
    texts = [c.prefix + c.secret + "\n" for c in declared_canaries(read_card(out))]
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    for _ in range(120):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def first_report(tiny_zoo, averaged, eval_cache):
    models = [ModelRef(averaged, "merged"), ModelRef(tiny_zoo / "models" / "reverse"),
              ModelRef(tiny_zoo / "models" / "sort")]
    calls = lmeval_runner.LM_EVAL_CALLS
    report = evaluate_models(models, zoo_dir=tiny_zoo, cache_dir=eval_cache, policy="default", threads=1, **PASS)
    return report, lmeval_runner.LM_EVAL_CALLS - calls


def test_results_have_every_domain_for_every_model(first_report, tiny_zoo):
    report, calls = first_report
    domains = {d["name"] for d in json.loads((tiny_zoo / "zoo.json").read_text())["domains"]}
    df = report.results
    assert calls == 3 and [r["lm_eval"] for r in report.runs] == ["ran"] * 3
    assert set(df["domain"]) == domains
    for model in ("avg", "reverse", "sort"):
        assert set(df[df["model"] == model]["domain"]) == domains
    assert set(df["n"]) == {16}  # the tiny zoo's full eval split, no limit
    assert set(df[df["model"] == "avg"]["role"]) == {"merged"}
    assert report.specialists == {"reverse": "reverse", "sort": "sort"}
    assert report.to_json()["specialists_source"] == "zoo"
    # zoo domain names in a card's training_data resolve to the zoo's train splits; the Hub-style
    # `datasets:` names of the zoo's cards are reported as unmeasured
    measured = [r for r in report.leakage if r.check == "contamination"]
    assert {(r.model, r.detail["eval_domain"]) for r in measured} == {(m, d) for m in ("reverse", "sort") for d in domains}
    assert {r.verdict for r in measured} <= {"pass", "fail"}
    assert {tuple(r.detail["training_data"]) for r in measured if r.model == "sort"} == {("sort",)}
    assert {tuple(r.detail["unmeasured"]) for r in measured if r.model == "sort"} == {("mergeops-zoo/sort",)}


def test_second_run_is_a_cache_hit(first_report, tiny_zoo, averaged, eval_cache):
    report, _ = first_report
    calls = lmeval_runner.LM_EVAL_CALLS
    again = evaluate_models([ModelRef(averaged, "merged"), ModelRef(tiny_zoo / "models" / "reverse"),
                             ModelRef(tiny_zoo / "models" / "sort")],
                            zoo_dir=tiny_zoo, cache_dir=eval_cache, policy="default", threads=1, **PASS)
    assert lmeval_runner.LM_EVAL_CALLS == calls  # lm-eval not called at all
    assert [r["lm_eval"] for r in again.runs] == ["cached"] * 3
    assert again.runs[0]["leakage"] == "cached"
    assert again.digest == report.digest
    assert again.to_json()["leakage"] == report.to_json()["leakage"]


def test_memorised_canary_is_detected_and_its_merge_measured(first_report, tiny_zoo, averaged, canary_model, eval_cache):
    alone = evaluate_models([ModelRef(canary_model, "merged")], zoo_dir=tiny_zoo, cache_dir=eval_cache,
                            policy="default", threads=1, **PASS)
    gates = {g.gate: g for g in alone.gates}
    assert not gates["leakage:canary_exposure"].passed and gates["leakage:canary_exposure"].observed > 7.0
    exposures = [r for r in alone.leakage if r.check == "canary_exposure"]
    assert len(exposures) == 3 and max(r.value for r in exposures) > 9  # ranked first of 1000
    assert "threshold" in alone.to_json()["leakage"][0]

    # The same canaries, declared by a parent, measured on a merge that never saw them: it passes.
    merged = evaluate_models([ModelRef(averaged, "merged"), ModelRef(canary_model)], zoo_dir=tiny_zoo,
                             cache_dir=eval_cache, policy="default", threads=1, **PASS)
    own = [r for r in merged.leakage if r.check == "canary_exposure" and r.model == "avg"]
    parent = [r for r in merged.leakage if r.check == "canary_exposure" and r.model == canary_model.name]
    assert len(own) == 3 and len(parent) == 3  # run on the merged model AND on the declaring parent
    assert {g.gate: g for g in merged.gates}["leakage:canary_exposure"].passed
    assert max(r.value for r in own) < 7.0 < min(r.value for r in parent)


def test_model_below_a_domain_minimum_fails_naming_domain_value_threshold(first_report, tiny_zoo, averaged, eval_cache):
    report = evaluate_models([ModelRef(averaged, "merged"), ModelRef(tiny_zoo / "models" / "sort")],
                             zoo_dir=tiny_zoo, cache_dir=eval_cache, threads=1,
                             policy={"domain_minimums": {"sort": 0.5}}, **PASS)
    gate = {g.gate: g for g in report.gates}["domain_minimum:sort"]
    assert not gate.passed and gate.threshold == 0.5
    assert gate.observed < 0.5
    assert "sort" in gate.reason and f"{gate.observed:.4g}" in gate.reason and "0.5" in gate.reason
    assert report.passed is False


def test_schema_rejects_a_real_table_with_a_domain_missing(first_report, tiny_zoo, eval_cache):
    report, _ = first_report
    suite = materialize(load_suite("zoo")[0], zoo_dir=tiny_zoo, cache_dir=eval_cache)
    validate_results(report.results, suite)
    with pytest.raises(ResultsInvalid):
        validate_results(report.results[report.results["domain"] != "swap"], suite)


def test_cli_json_has_design_keys_and_plots_are_pngs(first_report, tiny_zoo, averaged, eval_cache, tmp_path):
    from flows.cli import cli

    audit = tmp_path / "audit.json"
    audit.write_text(json.dumps({"verdict": "pass", "findings": []}))
    out = tmp_path / "eval" / "report.json"
    # no --merged: the manifest marks the merged model and names its parents
    result = CliRunner().invoke(cli, ["evaluate", str(averaged), "--zoo", str(tiny_zoo), "--policy", "default",
                                      "--audit", str(audit), "--json", str(out), "--cache-dir", str(eval_cache),
                                      "--threads", "1"])
    assert "domain" in result.output and "retention" in result.output, result.output
    doc = json.loads(out.read_text())
    assert {"results", "retention", "leakage", "gates"} <= set(doc)
    assert all(set(r) == {"content_id", "model", "role", "domain", "task", "metric", "value", "stderr", "n"}
               for r in doc["results"])
    assert all({"check", "model", "value", "threshold", "verdict"} <= set(r) for r in doc["leakage"])
    assert all(set(g) == {"gate", "observed", "threshold", "passed", "reason"} for g in doc["gates"])
    assert {r["model"] for r in doc["results"]} == {"avg", "reverse", "sort"}
    assert [r["lm_eval"] for r in doc["runs"]] == ["cached"] * 3
    assert result.exit_code == (0 if doc["passed"] else 1), result.output
    import matplotlib.image

    for name in ("report.bars.png", "report.heatmap.png"):
        data = (out.parent / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(out.parent / name).ndim == 3


def test_cli_refuses_ambiguous_roles(tiny_zoo):
    from flows.cli import cli

    result = CliRunner().invoke(cli, ["evaluate", str(tiny_zoo / "models" / "reverse"),
                                      str(tiny_zoo / "models" / "sort"), "--zoo", str(tiny_zoo)])
    assert result.exit_code == 2 and "--merged" in result.output


def test_roles_from_manifest_and_a_changed_parent_is_refused(averaged, tiny_zoo, tmp_path):
    refs = resolve_models([averaged])
    assert [(r.role, r.label) for r in refs] == [("merged", "avg"), ("parent", "reverse"), ("parent", "sort")]
    explicit = resolve_models([tiny_zoo / "models" / "sort"], merged=tiny_zoo / "models" / "reverse")
    assert [(r.role, r.label) for r in explicit] == [("merged", "reverse"), ("parent", "sort")]
    moved = tmp_path / "avg"
    shutil.copytree(averaged, moved)
    manifest = json.loads((moved / MANIFEST_NAME).read_text())
    manifest["parents"][0]["content_id"] = "f" * 64
    (moved / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="changed since the merge"):
        resolve_models([moved])


def test_user_suite_with_an_inline_lm_eval_task(tiny_zoo, eval_cache, tmp_path):
    data = tmp_path / "suite" / "rev8.jsonl"
    data.parent.mkdir()
    lines = (tiny_zoo / "domains" / "reverse" / "eval.jsonl").read_text().splitlines()[:8]
    data.write_text("\n".join(lines) + "\n")
    config = {"task": "my_rev8", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "rev8.jsonl"}},
              "test_split": "test", "output_type": "loglikelihood", "doc_to_text": "{{prompt}}",
              "doc_to_target": "{{target}}", "target_delimiter": "",
              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
    suite_file = data.parent / "mine.yaml"
    suite_file.write_text(json.dumps({"name": "mine", "zoo_domains": [],
                                      "tasks": [{"config": config, "domain": "rev8", "metric": "acc"}]}))
    report = evaluate_models([ModelRef(tiny_zoo / "models" / "reverse", "merged")], suite=suite_file,
                             cache_dir=eval_cache, threads=1)
    assert report.results[["domain", "task", "metric", "n"]].values.tolist() == [["rev8", "my_rev8", "acc", 8]]
    assert report.gates is None and "gates" not in report.to_json()
    # the suite hash follows the data's bytes, not its path
    moved = tmp_path / "elsewhere"
    shutil.copytree(data.parent, moved)
    first = _materialize(suite_file, eval_cache)
    assert _materialize(moved / "mine.yaml", eval_cache).suite_hash == first.suite_hash
    (moved / "rev8.jsonl").write_text("\n".join(lines[:7]) + "\n")
    assert _materialize(moved / "mine.yaml", eval_cache).suite_hash != first.suite_hash


def _materialize(path: Path, cache_dir: Path):
    suite, base = load_suite(path)
    return materialize(suite, zoo_dir=None, cache_dir=cache_dir, base_dir=base)


def _merge(recipe: str, out: Path) -> Path:
    from merge.recipe import parse_recipe
    from merge.run import run_merge

    run_merge(parse_recipe(recipe), out, progress=False)
    return out


def test_real_merges_with_and_without_the_canary_parent(tiny_zoo, canary_model, eval_cache, tmp_path_factory):
    """A task-arithmetic merge carrying the memorised parent at weight 1 is stopped by the leakage
    gate; one of two other specialists, checked for the same canaries via the policy, passes it."""
    zoo, out = tiny_zoo / "models", tmp_path_factory.mktemp("merges")
    leaky = _merge(f"merge_method: task_arithmetic\nbase_model: {zoo / 'base'}\ndtype: float32\nmodels:\n"
                   f"  - model: {canary_model}\n    parameters: {{weight: 1.0}}\n"
                   f"  - model: {zoo / 'reverse'}\n    parameters: {{weight: 0.5}}\n", out / "leaky")
    clean = _merge(f"merge_method: task_arithmetic\nbase_model: {zoo / 'base'}\ndtype: float32\nmodels:\n"
                   f"  - model: {zoo / 'reverse'}\n    parameters: {{weight: 0.5}}\n"
                   f"  - model: {zoo / 'sort'}\n    parameters: {{weight: 0.5}}\n", out / "clean")
    canaries = [c.model_dump() for c in declared_canaries(read_card(canary_model))]
    policy = {"leakage": {"canaries": canaries}}
    stopped = evaluate_models(resolve_models([leaky]), zoo_dir=tiny_zoo, cache_dir=eval_cache, policy=policy,
                              threads=1, **PASS)
    gate = {g.gate: g for g in stopped.gates}["leakage:canary_exposure"]
    assert not gate.passed and gate.observed > 7.0, gate.reason
    passed = evaluate_models(resolve_models([clean]), zoo_dir=tiny_zoo, cache_dir=eval_cache, policy=policy,
                             threads=1, **PASS)
    gate = {g.gate: g for g in passed.gates}["leakage:canary_exposure"]
    assert gate.passed and gate.observed is not None and gate.observed < 7.0, gate.reason
    assert {r["model"] for r in passed.runs} == {"clean", "base", "reverse", "sort"}  # from the manifest


def test_cli_champion_regression_and_audit_verdicts(first_report, tiny_zoo, averaged, eval_cache, tmp_path):
    from flows.cli import cli

    champion = tmp_path / "champion.json"
    champion.write_text(json.dumps({"reverse": 1.0}))
    audit = tmp_path / "audit.json"
    audit.write_text(json.dumps({"verdict": "pass", "findings": [
        {"parent": "x", "check": "license.non-commercial", "severity": "error", "message": "nc"}]}))
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["evaluate", str(averaged), "--zoo", str(tiny_zoo), "--policy", "default",
                                      "--champion", str(champion), "--audit", str(audit), "--json", str(out),
                                      "--cache-dir", str(eval_cache), "--threads", "1"])
    assert result.exit_code == 1, result.output
    gates = {g["gate"]: g for g in json.loads(out.read_text())["gates"]}
    assert not gates["champion_regression:reverse"]["passed"] and "reverse" in gates["champion_regression:reverse"]["reason"]
    assert gates["audit"]["passed"] and not gates["license"]["passed"]
    assert "FAIL champion_regression:reverse" in result.output
