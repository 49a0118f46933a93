"""``mergeops report``: collect what the registry holds on one version and publish it as one page.

The page itself is drawn by registry/report_html.py from a ``ReportData``; this module gathers it:
the version and its tags, ``lineage.json``, the audit report stored beside it (``audit/audit.json``,
for the findings), and the audit-log entries about the version with each one's signature status.
The audit log decides state; tags are shown only as their mirror.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from mlflow.exceptions import MlflowException

from evaluation._io import atomic_write_text
from merge.bounded import last_mapping
from merge.errors import UsageError
from registry import mlflow_registry as reg
from registry.audit_log import AuditLog
from registry.errors import AuditLogTampered, RegistryError
from registry.keys import verify_signature
from registry.lineage import LineageRecord

# The audit-log events that concern one version (``remerge_triggered`` is about a model).
VERSION_EVENTS = ("registered", "approved", "rejected", "promoted", "verified")
NO_PUBLIC_KEY = "unchecked (no public key)"
ARTIFACT = "report"  # the page is logged to the version's run as report/report.html


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows; plain data, so the renderer is a pure function of it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str
    tags: dict[str, str]  # the version's mergeops.* tags, prefix removed
    lineage: LineageRecord
    audit_report: dict | None  # `mergeops audit --json` as stored with the version; None if absent
    intended_use: str | None
    events: list[dict]  # audit-log entries about this version, each with "signature" added
    log_problem: str | None = None  # why the audit log could not be read, if it could not
    generated_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def signature_statuses(entries: list[dict], public_pem: bytes | None) -> list[str]:
    """Per entry: ``valid`` / ``invalid`` (its ``sig`` over the ASCII bytes of its ``hash``, checked
    with ``public_pem``), ``unsigned`` (no ``sig``), or ``unchecked (no public key)``."""
    out = []
    for entry in entries:
        sig = entry.get("sig")
        if not sig:
            out.append("unsigned")
        elif public_pem is None:
            out.append(NO_PUBLIC_KEY)
        else:
            try:
                data = str(entry.get("hash", "")).encode("ascii")
            except UnicodeEncodeError:
                out.append("invalid")
                continue
            out.append("valid" if verify_signature(public_pem, data, str(sig)) else "invalid")
    return out


def version_entries(entries: list[dict], name: str, version: str) -> list[dict]:
    """The entries about ``name`` v``version``, oldest first."""
    return [e for e in entries if e.get("event") in VERSION_EVENTS and isinstance(e.get("data"), dict)
            and e["data"].get("model") == name and str(e["data"].get("version")) == str(version)]


def _audit_report(tracking_uri: str, info: reg.VersionInfo) -> dict | None:
    """The audit report logged under ``audit/`` at registration (the findings live only there)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = reg.download(tracking_uri, info, "audit/audit.json", Path(tmp))
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, MlflowException):
            return None
    return doc if isinstance(doc, dict) else None


def _intended_use(audit_report: dict | None, recipe_text: str) -> str | None:
    """What the audit judged the licences for; else what the recipe asks (older versions)."""
    if audit_report and audit_report.get("intended_use"):
        return str(audit_report["intended_use"])
    recipe = last_mapping(recipe_text, what="recipe")
    return str(recipe["intended_use"]) if recipe.get("intended_use") else None


def _log_entries(audit_log_path: Path | None) -> tuple[list[dict], str | None]:
    if audit_log_path is None:
        return [], "no audit log configured"
    try:
        return AuditLog(audit_log_path).entries(), None
    except AuditLogTampered as exc:  # shown on the page: an auditor must see it, not a blank
        return [], str(exc)
    except OSError as exc:
        return [], f"{audit_log_path}: cannot be read ({exc.strerror})"


def collect(tracking_uri: str, spec: str, *, audit_log_path: Path | None,
            public_key: bytes | None) -> ReportData:
    """Gather the page's data for ``NAME@VERSION`` (or ``NAME@ALIAS``)."""
    name, at, ref = spec.partition("@")
    if not (name and at and ref) or "@" in ref:
        raise UsageError(f"{spec!r}: expected NAME@VERSION, e.g. demo-merge@3")
    info, lineage = reg.describe(tracking_uri, spec)
    entries, problem = _log_entries(audit_log_path)
    mine = version_entries(entries, info.name, info.version)
    events = [{**e, "signature": s} for e, s in zip(mine, signature_statuses(mine, public_key), strict=True)]
    tags = {k.removeprefix(reg.TAG): v for k, v in info.tags.items() if k.startswith(reg.TAG)}
    audit_report = _audit_report(tracking_uri, info)
    return ReportData(name=info.name, version=info.version, aliases=tuple(sorted(info.aliases)),
                      run_id=info.run_id, tags=tags, lineage=lineage, audit_report=audit_report,
                      intended_use=_intended_use(audit_report, lineage.recipe.text), events=events,
                      log_problem=problem)


def write_report(tracking_uri: str, spec: str, out: Path, *, audit_log_path: Path | None,
                 public_key: bytes | None) -> Path:
    """Render the page for ``spec`` to ``out`` (atomically) and log it to the version's run as
    ``report/report.html``. Returns ``out``."""
    from registry.report_html import render_report

    out = Path(out)
    if out.is_dir():
        raise UsageError(f"--html {out}: is a directory; name a file, e.g. {out / 'report.html'}")
    data = collect(tracking_uri, spec, audit_log_path=audit_log_path, public_key=public_key)
    page = render_report(data)
    try:
        atomic_write_text(out, page)
        os.chmod(out, 0o644)  # a page to share, not a secret (the temp file was 0600)
    except OSError as exc:
        raise UsageError(f"--html {out}: cannot write it ({exc.strerror}); choose a writable path") from None
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "report.html"
        copy.write_text(page, encoding="utf-8")
        try:
            reg.client(tracking_uri).log_artifact(data.run_id, str(copy), ARTIFACT)
        except MlflowException as exc:
            raise RegistryError(f"{data.name} v{data.version}: page written to {out}, but not logged to "
                                f"run {data.run_id} ({exc.message})") from exc
    return out
