"""`mergeops report`: the auditor's page, rendered by headless Chromium and read back as a DOM.

One registered version on a real sqlite store (no merge: ``make_lineage``'s tiny dirs), with hostile
strings in its recipe, a parent reference, an audit finding and a reviewer's comment; a real
approval, promotion and ``verified`` entry in the audit log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_lineage import RECIPE, make_lineage

from flows.cli import cli
from registry import approvals
from registry import mlflow_registry as reg
from registry.audit_log import AuditLog
from registry.identity import Actor
from registry.keys import load_signing_key
from registry.lineage import GateRecord, LeakageResult
from registry.report import NO_PUBLIC_KEY, collect, signature_statuses
from registry.report_html import render_report

HOSTILE = "<script>alert(1)</script>"
NAME = "audited-merge"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's `chromium` is not installed "
                                    "(apt-get install chromium); the page is checked as Chromium renders it")


def _hostile_lineage(tmp: Path):
    record, merged = make_lineage(tmp)
    text = RECIPE + f"# {HOSTILE}\nintended_use: commercial\n"
    p0, p1 = record.parents
    return record.model_copy(update={
        "recipe": record.recipe.model_copy(update={"text": text, "sha256": hashlib.sha256(text.encode()).hexdigest()}),
        "parents": [p0.model_copy(update={"reference": f"p1{HOSTILE}", "license": "mit"}),
                    p1.model_copy(update={"repo_id": "acme/qwen-plurals", "commit": "c0ffee" * 6 + "abcd"})],
        "leakage": [*record.leakage,
                    LeakageResult(check="contamination", model="p2", verdict="not_checked"),
                    LeakageResult(check="pii", model="merged", value=0.0, threshold=0.0, verdict="pass")],
        "gates": [*record.gates,
                  GateRecord(gate="domain_minimum:sort", observed=0.9, threshold=0.5, passed=True),
                  GateRecord(gate="retention:reverse", observed=0.9, threshold=0.8, passed=True)],
    }), merged


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """A store holding one approved, promoted and verified version; its signing key pair exists."""
    home = tmp_path_factory.mktemp("report-home")
    uri, log = f"sqlite:///{home / 'mlflow.db'}", home / "audit-log.jsonl"
    key = load_signing_key(home / "keys" / "signing-key.pem", create=True)
    record, merged = _hostile_lineage(home / "models")
    audit = {"verdict": "pass", "intended_use": "commercial",
             "findings": [{"parent": "p2", "check": "weights", "severity": "warning",
                           "message": f"large delta {HOSTILE}"}],
             "parents": [{"path": "p2", "content_id": record.parents[1].content_id, "license": "apache-2.0",
                          "verdict": "pass"}]}
    (home / "audit.json").write_text(json.dumps(audit))
    info = reg.register_candidate(tracking_uri=uri, name=NAME, model_dir=merged, lineage=record,
                                  audit_log_path=log, audit_reports=[home / "audit.json"],
                                  artifact_location=(home / "mlartifacts").as_uri(), signing_key=key)
    approvals.approve(uri, NAME, info.version, reviewer=Actor("bob@example.com", authenticated=True),
                      comment=f"fine {HOSTILE}",
                      audit_log_path=log)
    approvals.promote(uri, NAME, info.version, by=Actor("carol@example.com", authenticated=True),
                      audit_log_path=log)  # as the governance service decides: signed-in people
    reg.record_event(uri, NAME, info.version, log, "verified", outcome="reproduced",
                     content_id=record.merged.content_id)
    reg.set_tags(uri, info, {"verify": "reproduced"})
    return {"home": home, "uri": uri, "log": log, "key": key, "version": info.version, "record": record,
            "run_id": info.run_id}


def _cli(store, *args):
    env = {"MERGEOPS_HOME": str(store["home"]), "MLFLOW_TRACKING_URI": store["uri"],
           "MERGEOPS_SERVICE_PUBLIC_KEY": None, "MERGEOPS_SIGNING_KEY": None}
    return CliRunner().invoke(cli, list(args), env=env)


def _dom(page: Path, tmp: Path) -> str:
    """The DOM after Chromium parsed and rendered the page."""
    out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp / 'profile'}",
                          "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "<html" in out.stdout, out.stderr[-2000:]
    return out.stdout


def _sections(dom: str) -> dict[str, str]:
    """{section id: its visible text, tags stripped and entities decoded}."""
    found = re.findall(r'<section id="(\w+)">(.*?)</section>', dom, flags=re.S)
    header = re.search(r"<header>(.*?)</header>", dom, flags=re.S).group(1)
    return {k: html.unescape(re.sub(r"<[^>]+>", " ", v)) for k, v in [("header", header), *found]}


def _rows(dom: str, section: str) -> list[list[str]]:
    """The cell texts of every table row in a section."""
    body = re.search(rf'<section id="{section}">(.*?)</section>', dom, flags=re.S).group(1)
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td>(.*?)</td>", row, flags=re.S)]
            for row in re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)]


def _tags(dom: str) -> list[tuple[str, str]]:
    """(tag name, its attribute text) for every element of the DOM."""
    return re.findall(r"<([a-zA-Z][\w:-]*)([^>]*)>", dom)


@pytest.fixture(scope="module")
def page(store, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report") / "audit page.html"
    result = _cli(store, "report", f"{NAME}@{store['version']}", "--html", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out)
    return {"path": out, "text": out.read_text(encoding="utf-8")}


@needs_chromium
def test_every_section_shows_the_real_values(store, page, tmp_path):
    record = store["record"]
    dom = _dom(page["path"], tmp_path)
    s = _sections(dom)
    head = s["header"]
    assert f"{NAME} v{store['version']}" in head and record.merged.content_id in head
    assert "champion" in head and "candidate" in head and "apache-2.0" in head and "commercial" in head
    assert "alice" in head and record.created_at in head

    lineage = s["lineage"]
    assert f"p1{HOSTILE}" in lineage  # the hostile reference shows as text
    assert record.parents[0].content_id[:16] in lineage and "acme/qwen-plurals" in lineage
    assert "c0ffee" in lineage and "mit" in lineage and "linear" in lineage and "seed 7" in lineage
    assert "intended_use: commercial" in lineage  # the full recipe text, in its <details>

    assert "large delta" in s["audit"] and "warning" in s["audit"]
    evaluation = s["evaluation"]
    assert "0.900" in evaluation and "0.500" in evaluation and "0.800" in evaluation  # score, minimum, threshold
    assert "not_checked" in s["leakage"] and "canary_exposure" in s["leakage"] and "pii" in s["leakage"]

    decisions = s["decisions"]
    logged = next(e for e in AuditLog(store["log"]).entries() if e["event"] == "approved")
    row = next(r for r in _rows(dom, "decisions") if r[:2] == [str(logged["seq"]), "approved"])
    assert row[3] == "bob@example.com"
    assert row[-1] == ("valid" if logged.get("sig") else "unsigned")  # the entry's own signature status
    assert "promoted" in decisions and "carol@example.com" in decisions and "tag (mirror)" in decisions
    assert "reproduced" in s["verify"]


@needs_chromium
def test_hostile_strings_stay_text_and_nothing_is_fetched(page, tmp_path):
    dom = _dom(page["path"], tmp_path)
    tags = _tags(dom)
    assert "script" not in {t.lower() for t, _ in tags}
    assert HOSTILE in html.unescape(dom)  # shown, as text
    for _, attrs in tags:
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", attrs, flags=re.I), attrs
    text = page["text"]
    assert "@import" not in text and not re.search(r"""url\(\s*["']?\s*(\w+:|//)""", text)  # url(#id) only
    assert not re.search(r"https?://", text)
    # the graph and the charts are inline SVG, each threshold drawn
    assert {"svg", "line"} <= {t for t, _ in tags}
    assert len(re.findall(r'class="threshold"', dom)) == 2


def test_the_page_is_logged_to_the_versions_run(store, page, tmp_path):
    client = reg.client(store["uri"])
    assert [a.path for a in client.list_artifacts(store["run_id"], "report")] == ["report/report.html"]
    copy = Path(client.download_artifacts(store["run_id"], "report/report.html", str(tmp_path)))
    assert copy.read_text(encoding="utf-8") == page["text"]


def test_signature_status_per_entry(store):
    entries = AuditLog(store["log"]).entries()
    key = store["key"]
    signed = {**entries[0], "sig": key.sign(entries[0]["hash"].encode("ascii")), "key_id": key.key_id}
    forged = {**entries[1], "sig": key.sign(entries[0]["hash"].encode("ascii"))}  # another entry's signature
    unsigned = {k: v for k, v in entries[2].items() if k not in ("sig", "key_id")}  # as older logs hold
    assert signature_statuses([signed, forged, unsigned], key.public) == ["valid", "invalid", "unsigned"]
    assert signature_statuses([signed, unsigned], None) == [NO_PUBLIC_KEY, "unsigned"]
    # the page shows each status beside its entry
    data = collect(store["uri"], f"{NAME}@{store['version']}", audit_log_path=store["log"], public_key=key.public)
    approved = next(e for e in data.events if e["event"] == "approved")
    forged_approval = {**approved, "sig": signed["sig"], "signature": signature_statuses(
        [{**approved, "sig": signed["sig"]}], key.public)[0]}
    page = render_report(dataclasses.replace(data, events=[forged_approval]))
    assert re.search(r"bob@example\.com.*?badge bad\">invalid<", page, flags=re.S)


def test_bad_specs_and_paths_are_one_error_line(store, tmp_path):
    for spec in ("no-at-sign", "@3", f"{NAME}@", f"{NAME}@99", "no-such-model@1"):
        result = _cli(store, "report", spec, "--html", str(tmp_path / "x.html"))
        assert result.exit_code == 2, (spec, result.output)
        assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert _cli(store, "report", f"{NAME}@{store['version']}", "--html", str(tmp_path)).exit_code == 2
    assert not (tmp_path / "x.html").exists()


def test_a_broken_log_and_a_missing_audit_report_are_said_not_hidden(store, tmp_path):
    log = tmp_path / "other-log.jsonl"
    record, merged = make_lineage(tmp_path / "models")
    info = reg.register_candidate(tracking_uri=store["uri"], name="bare-merge", model_dir=merged, lineage=record,
                                  audit_log_path=log, artifact_location=(store["home"] / "mlartifacts").as_uri(),
                                  signing_key=load_signing_key(store["home"] / "keys" / "signing-key.pem", create=False))
    log.write_text(log.read_text().replace('"registered"', '"approved"'))  # an edited entry
    data = collect(store["uri"], f"bare-merge@{info.version}", audit_log_path=log, public_key=None)
    assert data.audit_report is None and data.events == [] and "the line was edited" in data.log_problem
    page = render_report(data)
    assert "audit log: " in page and "the audit report was not stored with this version" in page
    assert "no audit-log entries about this version" in page and "never verified" in page
