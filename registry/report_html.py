"""The auditor's page for one registered version: one self-contained HTML file.

``render_report(data)`` is a pure function of a ``registry.report.ReportData``: no I/O, no clock.
The page fetches nothing (inline CSS, inline SVG, no script, no font or image) so it opens offline
and can be archived as it is. Every string from the registry passes through ``_e`` (html.escape):
recipes, references, reviewers' comments and findings come from users.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

from registry.lineage_tree import _num as num
from registry.report_svg import Bar, bar_chart, lineage_graph

if TYPE_CHECKING:
    from registry.report import ReportData

_ID = 16  # hex digits shown; the full id is in the title (hover)
_HASH = re.compile(r"[0-9a-f]{40,64}")  # content ids, hashes and run ids in log entries: shortened
_MIRROR = ("approval", "decided_by", "decided_at", "decision_comment", "promoted_by", "promoted_at",
           "superseded_by", "superseded_at", "verify")
_GOOD = {"pass", "ok", "clean", "none", "valid", "reproduced", "approved", "true"}
_WARN = {"not_checked", "unsigned", "pending", "warning", "unknown", "unmeasured", "not audited"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
main{max-width:1100px;margin:0 auto;padding:24px}
header{background:#1d2330;color:#fff;padding:20px 24px;border-radius:10px}
header h1{margin:0 0 10px;font-size:24px} header dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
header dt{color:#aab3c5} header dd{margin:0} header code{color:#fff}
section{background:#fff;border-radius:10px;padding:16px 24px;margin-top:18px;box-shadow:0 1px 2px #0002}
h2{font-size:18px;margin:4px 0 12px} h3{font-size:15px;margin:16px 0 8px}
table{border-collapse:collapse;width:100%;margin:6px 0} th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e3e6eb;vertical-align:top;overflow-wrap:break-word}
th{background:#f0f2f5;font-weight:600} .num{font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12.5px}
pre{background:#f0f2f5;padding:10px;overflow:auto;white-space:pre-wrap;word-break:break-all}
.badge{display:inline-block;white-space:nowrap;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;background:#e3e6eb}
.good{background:#d6f5df;color:#10622b} .bad{background:#fbd9d9;color:#8a1414} .warn{background:#fff0c2;color:#6b4e00}
.muted{color:#6b7385} .alias{background:#3b4a6b;color:#fff;margin-right:4px}
svg{width:100%;height:auto;display:block;margin:8px 0} svg.chart{max-width:720px}
svg .node rect{fill:#f0f2f5;stroke:#8a94a8} svg .node.ok rect{stroke:#2e9d55} svg .node.bad rect{stroke:#c0392b}
svg .node.step rect{fill:#e8eefc;stroke:#3b5bdb} svg .node.version rect{fill:#1d2330;stroke:#1d2330}
svg .node.version text{fill:#fff} svg .t1{font-weight:700;font-size:14px} svg .t2{font-size:12px;font-family:ui-monospace,monospace}
svg .edge{fill:none;stroke:#8a94a8;stroke-width:2} svg marker path{fill:#8a94a8}
svg .bar rect{fill:#a9b1c2} svg .bar.pass rect{fill:#2e9d55} svg .bar.fail rect{fill:#c0392b}
svg .lbl{text-anchor:end;font-size:12px} svg .val,svg .tick{font-size:11px;fill:#4a5368} svg .tick{text-anchor:middle}
svg .threshold{stroke:#1d2330;stroke-width:2.5;stroke-dasharray:4 3} svg .axis{stroke:#8a94a8} svg .ctitle{font-weight:600;font-size:13px}
footer{color:#6b7385;font-size:12px;margin:18px 0}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _badge(value: object) -> str:
    text = str(value)
    low = text.lower()
    css = "good" if low in _GOOD else "warn" if low in _WARN or low.startswith("unchecked") else "bad"
    return f'<span class="badge {css}">{_e(text)}</span>'


def _id(value: str | None) -> str:
    if not value:
        return '<span class="muted">–</span>'
    return f'<code title="{_e(value)}">{_e(value[:_ID])}</code>'


def _table(head: list[str], rows: list[list[str]], empty: str) -> str:
    """``rows`` hold cell HTML, already escaped."""
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    cells = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _n(value: object) -> str:
    return f'<span class="num">{_e(num(value))}</span>'


def _header(d: ReportData) -> str:
    rec, code = d.lineage, d.lineage.code
    aliases = ("".join(f'<span class="badge alias">{_e(a)}</span>' for a in d.aliases)
               or '<span class="muted">none</span>')
    git = f"git {code.git_sha or 'unknown'}" + (" (dirty)" if code.git_dirty else "")
    facts = [("aliases", aliases), ("content id", f"<code>{_e(rec.merged.content_id)}</code>"),
             ("effective licence", _e(rec.audit.effective_license or "unknown")),
             ("intended use", _e(d.intended_use or "not recorded")), ("requested by", _e(rec.requested_by)),
             ("created at", _e(rec.created_at)),
             ("code version", f"<code>{_e(git)}</code> · mergeops {_e(code.mergeops or 'unknown')}"),
             ("MLflow run", f"<code>{_e(d.run_id)}</code>")]
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return f"<header><h1>{_e(d.name)} v{_e(d.version)}</h1><dl>{rows}</dl></header>"


def _lineage(d: ReportData) -> str:
    rec = d.lineage
    parents = [[_e(p.reference), _id(p.content_id), _e(p.repo_id or "–"), _id(p.commit or p.resolved_revision),
                _e(p.license or "unknown"), _badge(p.audit_verdict)] for p in rec.parents]
    packages = ", ".join(f"{k} {v}" for k, v in sorted(rec.code.packages.items()))
    dvc = "".join(f"<li><code>{_e(k)}</code> md5 <code>{_e(v)}</code></li>" for k, v in sorted(rec.dvc.md5s.items()))
    judged = "".join(f"<li>{kind}: {_e(j.name)} ({_e(j.source)}), sha256 {_id(j.sha256)}</li>"
                     for kind, j in (("suite", rec.suite), ("policy", rec.policy)) if j)
    judged += "".join(f"<li>calibration statistics <code>{_e(s.path)}</code>, sha256 {_id(s.sha256)}</li>"
                      for s in rec.statistics)
    return ("<section id=\"lineage\"><h2>Lineage</h2>"
            + lineage_graph(rec, title=f"{d.name} v{d.version}", aliases=d.aliases)
            + "<h3>Parents</h3>"
            + _table(["reference", "content id", "Hugging Face repo", "commit / revision", "licence", "audit"],
                     parents, "no parents recorded")
            + f"<h3>Recipe</h3><p>method <b>{_e(rec.recipe.method or 'unknown')}</b> · seed <b>{_e(rec.seed)}</b>"
            f" · sha256 {_id(rec.recipe.sha256)}</p>"
            f"<details><summary>full recipe text</summary><pre>{_e(rec.recipe.text)}</pre></details>"
            f"<h3>Reproducibility</h3><ul><li>packages: {_e(packages or 'not recorded')}</li>"
            f"<li>DVC revision {_id(rec.dvc.revision)}</li>{dvc}{judged}</ul></section>")


def _audit(d: ReportData) -> str:
    rec, report = d.lineage, d.audit_report or {}
    verdicts = [[_e(p.get("path") or p.get("reference")), _id(p.get("content_id")), _e(p.get("license") or "unknown"),
                 _badge(p.get("verdict", "unknown"))] for p in report.get("parents", [])] or [
        [_e(p.reference), _id(p.content_id), _e(p.license or "unknown"), _badge(p.audit_verdict)] for p in rec.parents]
    findings = [[_e(f.get("parent", "")), _e(f.get("check", "")), _badge(f.get("severity", "unknown")),
                 _e(f.get("message", ""))] for f in report.get("findings", [])]
    none = "no findings" if d.audit_report is not None else "the audit report was not stored with this version"
    obligations = "".join(f"<li>{_e(o)}</li>" for o in rec.audit.obligations)
    return (f"<section id=\"audit\"><h2>Audit {_badge(rec.audit.verdict)}</h2>"
            f"<p>effective licence <b>{_e(rec.audit.effective_license or 'unknown')}</b></p>"
            + (f"<ul>{obligations}</ul>" if obligations else "")
            + "<h3>Per parent</h3>" + _table(["parent", "content id", "licence", "verdict"], verdicts, "no parents")
            + "<h3>Findings</h3>" + _table(["parent", "check", "severity", "message"], findings, none) + "</section>")


def _threshold(gate) -> float | None:
    return gate.threshold if gate is not None and isinstance(gate.threshold, int | float) else None


def _evaluation(d: ReportData) -> str:
    ev, gates = d.lineage.evaluation, {g.gate: g for g in d.lineage.gates}
    domains = sorted(set(ev.scores) | set(ev.retention))
    rows, score_bars, retention_bars = [], [], []
    for dom in domains:
        low, keep = gates.get(f"domain_minimum:{dom}"), gates.get(f"retention:{dom}")
        rows.append([_e(dom), _e(ev.metrics.get(dom, "")), _n(ev.scores.get(dom)), _n(low.threshold if low else None),
                     _n(ev.retention.get(dom)), _n(keep.threshold if keep else None),
                     " ".join(_badge("pass" if g.passed else "fail") for g in (low, keep) if g) or "–"])
        if dom in ev.scores:
            score_bars.append(Bar(dom, ev.scores[dom], _threshold(low), low.passed if low else None))
        if dom in ev.retention:
            retention_bars.append(Bar(dom, ev.retention[dom], _threshold(keep), keep.passed if keep else None))
    charts = "".join(bar_chart(title, bars) for title, bars in (
        ("score per domain (merged model)", score_bars),
        ("retention per domain (merged / best parent)", retention_bars)) if bars)
    gate_rows = [[_e(g.gate), _n(g.observed), _n(g.threshold), _badge("pass" if g.passed else "fail"), _e(g.reason)]
                 for g in d.lineage.gates]
    avg = "" if ev.normalized_average is None else f"<p>normalized average {_e(num(ev.normalized_average))}</p>"
    return ("<section id=\"evaluation\"><h2>Evaluation and gates " + _badge(d.lineage.gate_verdict) + "</h2>"
            + _table(["domain", "metric", "score", "minimum", "retention", "retention minimum", "gates"], rows,
                     "no scores recorded")
            + avg + charts + "<h3>Gates</h3>"
            + _table(["gate", "observed", "threshold", "passed", "reason"], gate_rows, "no gates recorded")
            + "</section>")


def _leakage(d: ReportData) -> str:
    rows = [[_e(r.check), _e(r.model), _e(r.detail.get("eval_domain", "")), _n(r.value), _n(r.threshold),
             _badge(r.verdict)] for r in sorted(d.lineage.leakage, key=lambda r: (r.check, r.model))]
    head = _badge(d.lineage.leakage_verdict) if rows else ""
    return (f"<section id=\"leakage\"><h2>Leakage {head}</h2>"
            + _table(["check", "model", "eval domain", "value", "threshold", "verdict"], rows,
                     "no leakage checks recorded") + "</section>")


def _actor(entry: dict) -> str:
    data = entry.get("data", {})
    return str(entry.get("actor") or data.get("reviewer") or data.get("by") or data.get("requested_by") or "–")


def _decisions(d: ReportData) -> str:
    def detail(e: dict) -> str:
        return "; ".join(f"{_e(k)}: " + (_id(v) if _HASH.fullmatch(str(v)) else _e(v))
                         for k, v in sorted(e.get("data", {}).items()) if k not in ("model", "version"))

    auth = {True: "yes", False: "no", None: "not recorded"}
    rows = [[_e(e.get("seq")), _e(e.get("event")), _e(e.get("at")), _e(_actor(e)),
             _e(auth.get(e.get("authenticated"), "?")), detail(e), _e(e.get("key_id") or "–"),
             _badge(e["signature"])] for e in d.events]
    problem = f'<p class="badge bad">audit log: {_e(d.log_problem)}</p>' if d.log_problem else ""
    mirror = [[_e(k), _e(d.tags[k]), '<span class="muted">tag (mirror)</span>'] for k in _MIRROR if k in d.tags]
    approvals = [[_e(a.decision), _e(a.reviewer), _e(a.at), _e(a.comment), '<span class="muted">tag (mirror)</span>']
                 for a in d.lineage.approvals]
    return ("<section id=\"decisions\"><h2>Approvals and promotions</h2>" + problem
            + "<h3>Audit log</h3><p class=\"muted\">The audit log decides state; each entry's signature is checked "
            "against the trusted public key.</p>"
            + _table(["seq", "event", "at", "actor", "authenticated", "detail", "key id", "signature"], rows,
                     "no audit-log entries about this version")
            + "<h3>Version tags</h3>" + _table(["tag", "value", "source"], mirror, "no decision tags")
            + _table(["decision", "reviewer", "at", "comment", "source"], approvals, "no approvals in the tags")
            + "</section>")


def _verify(d: ReportData) -> str:
    last = next((e for e in reversed(d.events) if e.get("event") == "verified"), None)
    if last is None:
        logged = '<p class="muted">no <code>verified</code> entry in the audit log</p>'
    else:
        data = last.get("data", {})
        logged = (f"<p>latest log entry: {_badge(data.get('outcome', 'unknown'))} at {_e(last.get('at'))}"
                  f" (entry {_e(last.get('seq'))}, signature {_badge(last['signature'])})</p>"
                  + (f"<pre>{_e(data['reason'])}</pre>" if data.get("reason") else ""))
    tag = d.tags.get("verify")
    shown = _badge(tag) if tag else '<span class="muted">never verified</span>'
    return (f"<section id=\"verify\"><h2>Verify</h2><p>tag <code>mergeops.verify</code>: {shown} "
            f"<span class=\"muted\">tag (mirror)</span></p>{logged}</section>")


def render_report(data: ReportData) -> str:
    """The whole page as one string."""
    title = f"{data.name} v{data.version} · mergeops report"
    body = "".join(part(data) for part in (_header, _lineage, _audit, _evaluation, _leakage, _decisions, _verify))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>{body}"
            f"<footer>Generated by mergeops at {_e(data.generated_at)} from the registry and the audit log.</footer>"
            "</main></body></html>\n")
