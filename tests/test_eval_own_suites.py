"""Suites of the user's own: the per-domain form, the `data` shorthand over JSONL/CSV/Parquet, the
list form, zoo domains only on request, and one clear SuiteError line for each bad file. No model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from evaluation.errors import SuiteError
from evaluation.suites import load_suite, materialize, prepare_suite

ROWS = [{"question": f"q{i} ?", "answer": f"a{i}", "id": i} for i in range(5)]


@pytest.fixture
def project(tmp_path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pd.DataFrame(ROWS).to_csv(data / "qa.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(data / "qa.parquet")
    return tmp_path


def _suite(root: Path, doc: dict | str, name: str = "suite.yaml") -> Path:
    path = root / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def _error(root: Path, doc: dict | str) -> str:
    with pytest.raises(SuiteError) as exc:
        prepare_suite(_suite(root, doc), cache_dir=root / "cache")
    message = str(exc.value)
    assert "\n" not in message and exc.value.exit_code == 2
    return message


def test_per_domain_form_with_the_shorthand_in_three_formats(project):
    doc = {"name": "acme", "domains": {
        fmt: {"tasks": [{"data": f"data/qa.{fmt}", "prompt": "question", "target": "answer"}]}
        for fmt in ("jsonl", "csv", "parquet")}}
    suite = prepare_suite(_suite(project, doc), cache_dir=project / "cache")
    assert suite.domains == ["csv", "jsonl", "parquet"]
    assert suite.primary() == {d: (d, "exact_match") for d in suite.domains}
    assert {t.n for t in suite.tasks} == {5}  # counted from each file: a pinned, full-run sample count
    for fmt, builder in (("jsonl", "json"), ("csv", "csv"), ("parquet", "parquet")):
        config = yaml.safe_load((suite.include_dir / f"{fmt}.yaml").read_text())
        assert config["dataset_path"] == builder
        assert Path(config["dataset_kwargs"]["data_files"]["test"]) == (project / "data" / f"qa.{fmt}").resolve()
        assert (config["doc_to_text"], config["doc_to_target"]) == ("{{question}}", "{{answer}}")
        # scored like the zoo: greedy to a newline, exact match of the stripped continuation
        assert config["generation_kwargs"] == {"until": ["\n"], "do_sample": False, "max_gen_toks": 16}
        assert config["filter_list"][0]["name"] == "strip"
    assert suite.data_files["csv"] == ((project / "data" / "qa.csv").resolve(),)


def test_first_task_is_primary_and_later_ones_are_reported(project):
    config = {"task": "qa_ll", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "data/qa.jsonl"}},
              "output_type": "loglikelihood", "doc_to_text": "{{question}}", "doc_to_target": "{{answer}}"}
    doc = {"name": "acme", "domains": {
        "qa": {"metric": "acc", "tasks": [{"config": config}, {"data": "data/qa.csv", "prompt": "question",
                                                                "target": "answer", "name": "qa_gen"}]},
        "arc": {"metric": "acc", "tasks": [{"task": "arc_easy"}]}}}
    suite = prepare_suite(_suite(project, doc), cache_dir=project / "cache")
    specs = {t.name: t for t in suite.tasks}
    assert (specs["qa_ll"].primary, specs["qa_gen"].primary, specs["qa_gen"].metrics) == ("acc", None, ("exact_match",))
    assert specs["arc_easy"].builtin and suite.needs_builtin and specs["arc_easy"].n is None
    assert suite.primary() == {"qa": ("qa_ll", "acc"), "arc": ("arc_easy", "acc")}
    assert set(suite.data_files) == {"qa"}  # a built-in reads the HF cache, no local file


def test_list_form_still_works_and_takes_the_shorthand(project):
    doc = {"name": "old", "tasks": [{"task": "arc_easy", "domain": "arc", "metric": "acc", "n": 10},
                                    {"data": "data/qa.jsonl", "prompt": "question", "target": "answer", "domain": "qa"}]}
    suite = prepare_suite(_suite(project, doc), cache_dir=project / "cache")
    assert suite.primary() == {"arc": ("arc_easy", "acc"), "qa": ("qa", "exact_match")}
    assert [t.n for t in suite.tasks] == [10, 5]


def test_a_suite_file_asks_for_no_zoo_but_the_shipped_ones_do(project):
    suite, _ = load_suite(_suite(project, {"name": "x", "domains": {"qa": {"tasks": [{"data": "data/qa.jsonl",
                                           "prompt": "question", "target": "answer"}]}}}))
    assert suite.zoo_domains == [] and not suite.wants_zoo
    for name in ("zoo", "zoo-full"):
        assert load_suite(name)[0].zoo_domains == "all"
        with pytest.raises(SuiteError, match=r"asks for zoo domains \(all\): give the zoo directory \(--zoo DIR"):
            prepare_suite(name, cache_dir=project / "cache")
    mixed = _suite(project, "name: m\nzoo_domains: [sort]\n", "mixed.yaml")
    with pytest.raises(SuiteError, match=r"asks for zoo domains \(sort\)"):
        prepare_suite(mixed, cache_dir=project / "cache")


def test_the_hash_follows_the_data_bytes_not_the_format_path_or_order_of_keys(project):
    def prep(fmt: str, root: Path):
        doc = {"name": "h", "domains": {"qa": {"tasks": [{"data": f"data/qa.{fmt}", "prompt": "question",
                                                          "target": "answer"}]}}}
        return prepare_suite(_suite(root, doc), cache_dir=project / "cache")

    first = prep("jsonl", project)
    moved = project / "moved"
    (moved / "data").mkdir(parents=True)
    (moved / "data" / "qa.jsonl").write_bytes((project / "data" / "qa.jsonl").read_bytes())
    assert prep("jsonl", moved).suite_hash == first.suite_hash
    assert prep("csv", project).suite_hash != first.suite_hash
    (moved / "data" / "qa.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    assert prep("jsonl", moved).suite_hash != first.suite_hash


@pytest.mark.parametrize("doc, expected", [
    ({"name": "x", "domains": {"qa": {"tasks": [{"data": "data/qa.jsonl", "prmopt": "question"}]}}},
     "unknown key 'domains.qa.tasks.0.prmopt'; did you mean 'prompt'?"),
    ({"name": "x", "domians": {}}, "unknown key 'domians'; did you mean 'domains'?"),
    ({"name": "x", "domains": {"qa": {"metric": "acc", "taks": []}}}, "did you mean 'tasks'?"),
    ({"name": "x", "domains": {"qa": {"metric": "acc"}}}, "domains.qa: a domain needs at least one task"),
    ({"name": "x", "domains": {"qa": {"tasks": []}}}, "a domain needs at least one task"),
    ({"name": "x", "domains": {"qa": {"tasks": [{"task": "arc_easy"}]}}}, "give `metric` here or on the domain"),
    ({"name": "x", "domains": {"qa": {"metric": "acc", "tasks": [{"data": "data/qa.jsonl"}]}}},
     "not what the first (primary) task reports ('exact_match')"),
    ({"name": "x", "domains": {"qa": {"tasks": [{"task": "arc_easy", "prompt": "q", "metric": "acc"}]}}},
     "`prompt` belongs to the `data` shorthand"),
    ({"name": "x", "domains": {"qa": {"tasks": [{"data": "data/qa.jsonl", "task": "arc_easy"}]}}},
     "give exactly one of `task`"),
    ({"name": "x", "domains": {"q a": {"tasks": [{"data": "data/qa.jsonl"}]}}}, "domain name 'q a'"),
    ({"name": "x"}, "the suite scores nothing"),
    ({"name": "x", "tasks": [{"task": "arc_easy", "domain": "arc"}]}, "give the domain's primary `metric`"),
])
def test_bad_suite_files_fail_on_one_line(project, doc, expected):
    assert expected in _error(project, doc)


@pytest.mark.parametrize("task, expected", [
    ({"data": "data/missing.jsonl"}, "domain 'qa': data file data/missing.jsonl not found (looked at"),
    ({"data": "data/qa.jsonl", "prompt": "question", "target": "reply"},
     "has no column 'reply' (it has: question, answer, id)"),
    ({"data": "data/qa.csv", "prompt": "prompt", "target": "answer"}, "qa.csv: has no column 'prompt'"),
    ({"data": "data/qa.parquet", "prompt": "question", "target": "nope"}, "qa.parquet: has no column 'nope'"),
    ({"data": "data/qa.txt"}, "unknown data format '.txt'"),
])
def test_bad_data_fails_on_one_line_naming_the_domain_and_file(project, task, expected):
    (project / "data" / "qa.txt").write_text("hello\n")
    assert expected in _error(project, {"name": "x", "domains": {"qa": {"tasks": [task]}}})


def test_a_ragged_jsonl_row_and_an_inline_config_without_its_file(project):
    (project / "data" / "ragged.jsonl").write_text('{"question": "a", "answer": "b"}\n{"question": "c"}\n')
    assert "row 2 has no column 'answer'" in _error(project, {"name": "x", "domains": {"qa": {"tasks": [
        {"data": "data/ragged.jsonl", "prompt": "question", "target": "answer"}]}}})
    config = {"task": "t", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "data/gone.jsonl"}}}
    assert "data file" in _error(project, {"name": "x", "domains": {"qa": {"metric": "acc",
                                                                           "tasks": [{"config": config}]}}})


def test_prepare_suite_is_cheap_enough_to_run_before_audit_and_merge(project):
    """It loads neither torch nor lm-eval: the pipeline can check a suite before a 60 s merge."""
    import subprocess
    import sys

    doc = {"name": "x", "domains": {"qa": {"tasks": [{"data": "data/qa.jsonl", "prompt": "question",
                                                      "target": "answer"}]}}}
    path = _suite(project, doc)
    code = ("import sys; from evaluation.suites import prepare_suite; "
            f"s = prepare_suite({str(path)!r}, cache_dir={str(project / 'cache')!r}); "
            "print(s.tasks[0].n, sorted(m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.split() == ["5", "[]"]
    assert materialize(load_suite(path)[0], cache_dir=project / "cache", base_dir=project).tasks[0].n == 5
