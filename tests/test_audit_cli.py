"""``mergeops audit`` end to end, and the tiny zoo's models through the audit."""

from __future__ import annotations

import json

import pytest
from audit_helpers import make_model, pickle_bomb
from click.testing import CliRunner

from flows.cli import cli
from registry.audit import audit_models

REGULAR = ["base", "reverse", "sort", "swap"]
ODD = {"odd-shape": "compat.architecture", "odd-tokenizer": "compat.tokenizer", "odd-pickle": "format.pickle"}


def run(*args: str):
    return CliRunner().invoke(cli, ["audit", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def models(tiny_zoo):
    return tiny_zoo / "models"


def test_zoo_regular_models_pass(models):
    report = audit_models(REGULAR, base_dir=models)
    assert report.verdict == "pass", report.errors()
    assert report.base == "base"
    assert all(p.license and p.content_id for p in report.parents)
    assert all(p.relative_delta is not None for p in report.parents[1:])


@pytest.mark.parametrize("odd, check", sorted(ODD.items()))
def test_zoo_odd_models_are_refused_with_the_right_finding(models, odd, check):
    report = audit_models(["base", "sort", odd], base_dir=models)
    errors = [(f.parent, f.check) for f in report.errors()]
    assert errors == [(odd, check)]
    assert [p.verdict for p in report.parents] == ["pass", "pass", "fail"]


def test_zoo_proprietary_model_needs_its_licence_routed(models, tiny_zoo):
    index = json.loads((tiny_zoo / "zoo.json").read_text())
    [name] = [m["name"] for m in index["models"] if m["canaries"]]
    report = audit_models(["base", name], base_dir=models)
    assert [f.check for f in report.errors()] == ["license.unknown"]  # the default policy refuses it


def test_cli_exit_codes(models, tmp_path):
    ok = run(str(models / "base"), str(models / "sort"))
    assert ok.exit_code == 0, ok.output
    assert "PASS" in ok.output and "bsd-3-clause" in ok.output
    refused = run(str(models / "base"), str(models / "swap"), "--intended-use", "commercial")
    assert refused.exit_code == 1
    assert "license.non-commercial" in refused.output and "FAIL" in refused.output
    assert run(str(tmp_path / "missing")).exit_code == 2
    assert run(str(models / "base"), "--intended-use", "military").exit_code == 2
    assert run(str(models / "base"), "--policy", str(tmp_path / "none.yaml")).exit_code == 2
    assert run(str(models / "base"), "--pin", "no-equals-sign").exit_code == 2


def test_cli_json_keys(models):
    result = run(str(models / "base"), str(models / "swap"), str(models / "odd-pickle"), "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert {"verdict", "effective_license", "obligations", "parents", "findings"} <= set(doc)
    assert doc["verdict"] == "fail" and isinstance(doc["obligations"], list)
    for parent in doc["parents"]:
        assert {"path", "content_id", "license", "verdict"} <= set(parent)
    assert [p["verdict"] for p in doc["parents"]] == ["pass", "pass", "fail"]
    for finding in doc["findings"]:
        assert set(finding) == {"parent", "check", "severity", "message"}
        assert finding["severity"] in ("info", "warning", "error")


def test_cli_pin_mismatch_exits_1(models):
    result = run(str(models / "sort"), "--pin", f"{models / 'sort'}={'0' * 64}", "--json")
    assert result.exit_code == 1
    assert [f["check"] for f in json.loads(result.stdout)["findings"]] == ["integrity.pin"]


def test_cli_never_unpickles(tmp_path):
    marker = tmp_path / "UNPICKLED"
    model = make_model(tmp_path / "m")
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle_bomb(marker))
    result = run(str(model))
    assert result.exit_code == 1 and "format.pickle" in result.output
    assert not marker.exists()


def test_cli_help_has_an_example():
    result = CliRunner().invoke(cli, ["audit", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "mergeops audit" in result.output
