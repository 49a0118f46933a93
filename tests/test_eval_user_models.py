"""Evaluation of a user's own models with no zoo anywhere: a tiny Qwen2 base and two fine-tunes
(tests/user_models.py), merged by the project's recipe, scored by `mergeops evaluate --suite FILE`
with real lm-eval, contamination measured from what each card declares."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from evaluation.contamination import Declarer, contamination_checks, resolve_training_data
from evaluation.gates import decide, parse_gate_policy
from evaluation.leakage import LeakagePolicy, read_card
from user_models import CONTAMINATED, HUB_DATASET, UserProject, build_user_project

NO_ZOO = {"MERGEOPS_ZOO": None}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> UserProject:
    return build_user_project(tmp_path_factory.mktemp("acme") / "acme")


@pytest.fixture(scope="module")
def merged(project) -> Path:
    from merge.recipe import load_recipe
    from merge.run import run_merge

    out = project.root / "merged"
    run_merge(load_recipe(project.recipe), out, progress=False)
    return out


@pytest.fixture(scope="module")
def audit_json(project, tmp_path_factory) -> Path:
    """The parents' real audit: the fixture's models pass it (licence, tokenizer, ancestry)."""
    from flows.cli import cli

    result = CliRunner(env=NO_ZOO).invoke(cli, ["audit", *map(str, project.parents), "--json"])
    assert result.exit_code == 0, result.output
    path = tmp_path_factory.mktemp("audit") / "audit.json"
    path.write_text(result.output)
    assert json.loads(result.output)["verdict"] == "pass"
    return path


def _evaluate(project, merged, audit_json, out: Path, *extra: str):
    from flows.cli import cli

    args = ["evaluate", str(merged), "--suite", str(project.suite), "--audit", str(audit_json), "--json", str(out),
            "--cache-dir", str(project.root.parent / "cache"), "--threads", "1", *extra]
    result = CliRunner(env=NO_ZOO).invoke(cli, args)
    return result, (json.loads(out.read_text()) if out.is_file() else None)


def _contamination(doc: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in doc["leakage"]:
        if r["check"] == "contamination":
            out.setdefault(r["model"], []).append(r)
    return out


def test_fixture_is_a_user_project_without_a_zoo(project):
    assert not list(project.root.rglob("zoo.json"))
    cards = {p.name: read_card(p) for p in project.parents}
    assert {c["license"] for c in cards.values()} == {"apache-2.0"}
    assert cards["qwen-capitals"]["base_model"] == cards["qwen-plurals"]["base_model"] == "acme/qwen-base"
    assert "training_data" not in cards["qwen-plurals"] and "datasets" not in cards["qwen-plurals"]
    config = json.loads((project.base / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_hidden_layers"]) == ("qwen2", 32, 2)
    tokenizer = json.loads((project.base / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "BPE" and tokenizer["pre_tokenizer"]["type"] == "ByteLevel"
    weights = {p.name: (p / "model.safetensors").read_bytes() for p in project.parents}
    assert len(set(weights.values())) == 3  # the fine-tunes differ from the base and from each other


def test_fixture_is_byte_identical_on_every_build_and_takes_another_architecture(project, tmp_path):
    from merge.manifest import content_id

    again = build_user_project(tmp_path / "again")
    assert [content_id(p) for p in again.parents] == [content_id(p) for p in project.parents]
    llama = build_user_project(tmp_path / "llama", arch="llama")
    assert json.loads((llama.base / "config.json").read_text())["model_type"] == "llama"
    with pytest.raises(ValueError, match="arch 'gpt9'"):
        build_user_project(tmp_path / "bad", arch="gpt9")


def test_a_prepared_suite_is_evaluated_as_is(project):
    from evaluation.run import ModelRef, evaluate_models
    from evaluation.suites import prepare_suite

    cache = project.root.parent / "cache"
    suite = prepare_suite(project.suite, cache_dir=cache)  # what a pipeline checks before audit and merge
    report = evaluate_models([ModelRef(project.finetune_manifest, "merged")], suite=suite, cache_dir=cache, threads=1)
    assert report.suite_hash == suite.suite_hash and sorted(report.scores.index) == ["capitals", "plurals"]
    assert {r.detail["eval_domain"]: r.value for r in report.leakage if r.check == "contamination"} == {
        "capitals": CONTAMINATED / 20, "plurals": 0.0}  # evaluated alone, its own card is read


def test_evaluate_own_suite_with_no_zoo(project, merged, audit_json, tmp_path):
    result, doc = _evaluate(project, merged, audit_json, tmp_path / "report.json", "--policy", str(project.policy))
    assert result.exit_code == 0, result.output
    assert {(r["model"], r["domain"]) for r in doc["results"]} == {
        (m, d) for m in ("merged", "qwen-base", "qwen-capitals", "qwen-plurals") for d in ("capitals", "plurals")}
    assert {(r["task"], r["metric"], r["n"]) for r in doc["results"]} == {
        ("capitals", "exact_match", 20), ("acme_plurals", "acc", 20)}
    assert doc["primary"] == {"capitals": {"task": "capitals", "metric": "exact_match"},
                              "plurals": {"task": "acme_plurals", "metric": "acc"}}
    # specialists without a zoo: the best-scoring parent per domain, and the report says so
    assert doc["specialists_source"] == "best parent"
    for domain, parent in doc["specialists"].items():
        assert doc["scores"][domain][parent] == max(doc["scores"][domain][p] for p in
                                                   ("qwen-base", "qwen-capitals", "qwen-plurals"))

    found = _contamination(doc)
    assert set(found) == {"qwen-base", "qwen-capitals", "qwen-plurals"}  # every parent, none silently
    [plain] = found["qwen-plurals"]
    assert plain["verdict"] == "not_checked" and plain["value"] is None and "declares no training data" in \
        plain["detail"]["reason"]
    capitals = {r["detail"]["eval_domain"]: r for r in found["qwen-capitals"]}
    assert capitals["capitals"]["value"] == pytest.approx(CONTAMINATED / 20)  # its manifest holds 2 eval rows
    assert capitals["plurals"]["value"] == 0.0 and capitals["capitals"]["verdict"] == "pass"
    assert capitals["capitals"]["detail"]["training_data"] == ["data/train.jsonl"]
    base = {r["detail"]["eval_domain"]: r for r in found["qwen-base"]}
    assert {r["value"] for r in base.values()} == {0.0}
    assert base["capitals"]["detail"]["unmeasured"] == [HUB_DATASET]  # a Hub id is reported, not ignored
    gates = {g["gate"]: g for g in doc["gates"]}
    assert gates["leakage:contamination"]["passed"] and gates["leakage:contamination"]["observed"] == 0.1
    assert "not checked: qwen-plurals" in gates["leakage:contamination"]["reason"]
    assert "leakage:contamination_checked" not in gates  # not required by this policy
    assert "NOT CHECKED contamination qwen-plurals" in result.output


def test_requiring_the_check_fails_the_gate_naming_the_unchecked_parent(project, merged, audit_json, tmp_path):
    strict = tmp_path / "strict.yaml"
    policy = yaml.safe_load(project.policy.read_text())
    policy["leakage"]["require_contamination_check"] = True
    strict.write_text(yaml.safe_dump(policy))
    result, doc = _evaluate(project, merged, audit_json, tmp_path / "strict.json", "--policy", str(strict))
    assert result.exit_code == 1, result.output
    assert [r["lm_eval"] for r in doc["runs"]] == ["cached"] * 4  # same bytes, same suite: nothing re-ran
    failed = [g for g in doc["gates"] if not g["passed"]]
    assert [g["gate"] for g in failed] == ["leakage:contamination_checked"]
    assert "qwen-plurals" in failed[0]["reason"] and "qwen-capitals" not in failed[0]["reason"]
    assert "FAIL leakage:contamination_checked" in result.output


def test_csv_and_parquet_data_files_score_like_jsonl(project, tmp_path):
    from flows.cli import cli

    rows = pd.read_json(project.eval_data["capitals"], lines=True)
    rows.to_csv(tmp_path / "capitals.csv", index=False)
    pd.read_json(project.eval_data["plurals"], lines=True).to_parquet(tmp_path / "plurals.parquet")
    suite = tmp_path / "tabular.yaml"
    suite.write_text(yaml.safe_dump({"name": "tabular", "domains": {
        "capitals": {"tasks": [{"data": "capitals.csv", "prompt": "question", "target": "answer"}]},
        "plurals": {"tasks": [{"data": "plurals.parquet", "prompt": "word", "target": "plural"}]}}}))
    out = tmp_path / "tabular.json"
    result = CliRunner(env=NO_ZOO).invoke(cli, ["evaluate", str(project.finetune_plain), "--suite", str(suite),
                                                "--json", str(out), "--cache-dir", str(tmp_path / "cache"),
                                                "--threads", "1"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert {(r["domain"], r["metric"], r["n"]) for r in doc["results"]} == {
        ("capitals", "exact_match", 20), ("plurals", "exact_match", 20)}
    assert doc["specialists_source"] is None and doc["specialists"] == {}  # evaluated alone: no parents
    # a model evaluated alone: its own card decides, and it declares nothing - said so, not passed
    assert [(r["model"], r["verdict"]) for r in doc["leakage"] if r["check"] == "contamination"] == [
        ("qwen-plurals", "not_checked")]


def test_a_manifest_mismatch_is_a_failure_record_and_the_file_is_not_used(project, tmp_path):
    model = tmp_path / "tampered"
    shutil.copytree(project.finetune_manifest, model)
    with (model / "data" / "train.jsonl").open("a") as fh:
        fh.write('{"text": "one more line"}\n')
    evals = {"capitals": [r["question"] + r["answer"] for r in map(json.loads, project.eval_data["capitals"]
                                                                    .read_text().splitlines())]}
    records = contamination_checks([Declarer("tampered", model, read_card(model), required=True)], evals,
                                   LeakagePolicy())
    assert [(r.check, r.verdict) for r in records] == [("training_data", "fail"), ("contamination", "not_checked")]
    assert records[0].detail["path"] == "data/train.jsonl" and "sha256 mismatch" in records[0].detail["reason"]
    assert records[0].detail["expected_sha256"] != records[0].detail["actual_sha256"]
    gates = {g.gate: g for g in decide(parse_gate_policy({}), candidate="m", scores={}, leakage=records)}
    assert not gates["leakage:contamination"].passed and "sha256 mismatch" in gates["leakage:contamination"].reason
    # untouched, the same declaration is used: 2 of the 20 capitals rows overlap
    intact = contamination_checks([Declarer("ok", project.finetune_manifest, read_card(project.finetune_manifest),
                                            required=True)], evals, LeakagePolicy())
    assert [(r.check, r.value) for r in intact] == [("contamination", CONTAMINATED / 20)]


def test_declarations_resolve_locally_or_are_reported(project, tmp_path):
    model = tmp_path / "m"
    (model / "data").mkdir(parents=True)
    (model / "data" / "a.csv").write_text("text,n\nhello world,1\n")
    (model / "data" / "b.txt").write_text("first line\n\nsecond line\n")
    card = {"datasets": ["data", "squad"], "training_data": ["sort", {"path": "data/a.csv"},
                                                              {"path": "data/none.jsonl", "sha256": "0" * 64}]}
    data = resolve_training_data(model, card)
    assert data.texts == {"data": ["hello world", "first line", "second line"]}
    assert data.unresolved == ["sort", "squad"]  # a zoo domain without a zoo, a Hub id
    assert [p["reason"].split(" (")[0] for p in data.problems] == ["manifest entry without `sha256`", "not found"]
    zoo_train = tmp_path / "train.jsonl"
    zoo_train.write_text('{"prompt": "sort cba=", "target": "abc"}\n')
    assert resolve_training_data(model, {"training_data": "sort"}, {"sort": zoo_train}).texts == {"sort": ["sort cba=abc"]}
    assert not resolve_training_data(model, {}).declared
