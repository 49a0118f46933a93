"""Finishing or undoing what a killed registration, approval or promotion left (``mergeops repair``).

A registration journals each step (registry/journal.py). One whose owner died is settled by what
MLflow holds for its attempt, found by the run's ``mergeops.attempt`` tag and the run's versions
rather than by the journal alone (a kill can fall between a step and its record):
- a model version exists → completed: alias ``candidate``, the signed ``registered`` entry and its
  MLflow copy (``complete_registration``; never a second entry);
- only a run → rolled back: the run is marked FAILED and deleted (a version is never deleted);
- nothing → rolled back: there was nothing to undo (DVC's content-addressed copies are kept).

Decisions and promotions are written to the log first and mirrored into MLflow after, so a kill
in between leaves the log ahead of its mirror. ``complete_mirrors`` copies each logged entry that
MLflow lacks: its ``(seq, hash)`` tag, a decision onto a version whose tag still says ``pending``,
a promotion onto a ``champion`` alias that still points where the entry says it was. A mirror that
says something else (an edited tag or alias) is tampering: left for ``log verify`` to name, never
overwritten here.
"""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import ViewType

from registry import journal
from registry.audit_log import AuditLog
from registry.errors import VersionNotFound
from registry.mlflow_registry import (
    _LOG_TAG,
    EXPERIMENT,
    TAG,
    client,
    complete_registration,
    get_version,
    mirror_decision,
    mirror_promotion,
)


def _run_of(tracking_uri: str, attempt: str) -> str | None:
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG}attempt` = '{attempt}'",
                         run_view_type=ViewType.ALL, max_results=2)
    return runs[0].info.run_id if runs else None


def _version_of(tracking_uri: str, model: str, run_id: str) -> str | None:
    found = client(tracking_uri).search_model_versions(f"name = '{model}' and run_id = '{run_id}'")
    return str(found[0].version) if found else None


def settle(tracking_uri: str, audit_log: Path | AuditLog, reg: journal.Registration) -> str:
    """Complete or roll back one abandoned registration; return one line saying which."""
    model, attempt = reg.facts["model"], reg.attempt
    run_id = reg.facts.get("run_id") or _run_of(tracking_uri, attempt)
    version = reg.facts.get("version") or (_version_of(tracking_uri, model, run_id) if run_id else None)
    if version is not None:
        info = get_version(tracking_uri, model, version)
        complete_registration(tracking_uri, info, audit_log)
        line = f"{model} v{version}: registration completed (it was cut short after step `{reg.state}`)"
    elif run_id is not None:
        c = client(tracking_uri)
        c.set_terminated(run_id, status="FAILED")
        c.delete_run(run_id)
        line = f"{model}: registration rolled back (no version was created; run {run_id} deleted)"
    else:
        line = f"{model}: registration rolled back (cut short after step `{reg.state}`; nothing was registered)"
    reg.done()
    return line


def settle_abandoned(tracking_uri: str, audit_log_path: Path, model: str | None = None) -> list[str]:
    """Settle every registration (of ``model``, or all) whose owner is gone; one line for each."""
    lines = []
    for reg in journal.abandoned(audit_log_path, model):
        try:
            lines.append(settle(tracking_uri, audit_log_path, reg))
        finally:
            reg.release()
    return lines


def complete_mirrors(tracking_uri: str, log: AuditLog) -> list[str]:
    """Copy into MLflow each logged entry whose copy a kill cut short; one line for each."""
    c = client(tracking_uri)
    lines: list[str] = []
    promoted: dict[str, dict] = {}
    for entry in log.entries():
        data = entry.get("data") or {}
        model, version = data.get("model"), data.get("version")
        if not model or version is None:
            continue
        try:
            info = get_version(tracking_uri, model, version)
        except VersionNotFound:
            continue  # `log verify` names an entry about a version MLflow lacks
        label, key = f"{model} v{version}", f"{_LOG_TAG}{entry['seq']}"
        if key not in info.tags and entry["event"] != "registered":  # (registrations: settle() above)
            c.set_model_version_tag(model, version, key, f"{entry['event']}:{entry['hash']}")
            lines.append(f"{label}: copied audit-log entry {entry['seq']} ({entry['event']}) into MLflow")
        if entry["event"] in ("approved", "rejected") and info.tag("approval", "pending") == "pending":
            mirror_decision(tracking_uri, get_version(tracking_uri, model, version), entry)
            lines.append(f"{label}: tags now show the logged decision ({entry['event']} by {entry['actor']})")
        if entry["event"] == "promoted":
            promoted[model] = entry
    for model, entry in promoted.items():
        alias = c.get_registered_model(model).aliases.get("champion")
        alias = str(alias) if alias is not None else None
        version, previous = entry["data"]["version"], entry["data"].get("previous")
        if alias != version and alias == previous:
            mirror_promotion(tracking_uri, get_version(tracking_uri, model, version), previous, entry)
            lines.append(f"{model} v{version}: alias champion moved as the log's promotion says")
    return lines
