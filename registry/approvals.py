"""Human decisions on a registered version: approve, reject, promote.

The rules, each checked before anything is written:
- four-eyes: the reviewer is never the requester (``mergeops.requested_by`` on the version);
- a version whose audit, gates or leakage checks failed cannot be approved;
- a version is decided once (approved or rejected); a new decision needs a new version;
- ``champion`` moves only to an approved, gate-passing version whose model artifact, downloaded
  and re-hashed, still matches the manifest in its lineage. Earlier champions keep their tags
  (``promoted_*``, ``superseded_*``) and the registered model keeps a ``champion.<n>`` history.
Every decision is a set of version tags plus one audit-log entry.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from merge.errors import UsageError
from registry import mlflow_registry as reg
from registry.errors import ApprovalRefused, RegistryError
from registry.lineage import ApprovalRecord


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _who(value: str, option: str) -> str:
    value = (value or "").strip()
    if not value:
        raise UsageError(f"{option} is empty; name the person, e.g. {option} alice@example.com")
    return value


def _decide(tracking_uri: str, name: str, version: str | int, reviewer: str, comment: str,
            audit_log_path: Path, decision: str) -> reg.VersionInfo:
    info = reg.get_version(tracking_uri, name, version)
    label = f"{name} v{info.version}"
    requester = info.tag("requested_by", "")
    if reviewer.casefold() == requester.strip().casefold():
        raise ApprovalRefused(f"{label}: {reviewer} requested this version and cannot review it; "
                              "ask another reviewer (four-eyes rule)")
    state = info.tag("approval", "pending")
    if state != "pending":
        raise ApprovalRefused(f"{label}: already {state} by {info.tag('decided_by')}; register a new version "
                              "to decide again")
    if decision == "approved":
        failed = [k for k in ("audit_verdict", "gate_verdict", "leakage_verdict") if info.tag(k) != "pass"]
        if failed:
            raise ApprovalRefused(f"{label}: cannot be approved, {', '.join(failed)} not pass; "
                                  "fix the recipe or parents and run the pipeline again")
    record = ApprovalRecord(decision=decision, reviewer=reviewer, at=_now(), comment=comment)
    approvals = json.loads(info.tag("approvals", "[]")) + [record.model_dump()]
    reg.set_tags(tracking_uri, info, {
        "approval": decision, "decided_by": reviewer, "decided_at": record.at, "decision_comment": comment,
        "approvals": json.dumps(approvals, sort_keys=True),
    })
    reg.record_event(tracking_uri, name, info.version, audit_log_path, decision,
                     reviewer=reviewer, requested_by=requester, comment=comment)
    return reg.get_version(tracking_uri, name, info.version)


def approve(tracking_uri: str, name: str, version: str | int, *, reviewer: str, comment: str = "",
            audit_log_path: Path) -> reg.VersionInfo:
    """Approve a gate-passing version; the reviewer must not be its requester."""
    return _decide(tracking_uri, name, version, _who(reviewer, "--reviewer"), comment, audit_log_path, "approved")


def reject(tracking_uri: str, name: str, version: str | int, *, reviewer: str, comment: str,
           audit_log_path: Path) -> reg.VersionInfo:
    """Reject a version; a reason is required."""
    if not (comment or "").strip():
        raise UsageError("--comment is required when rejecting; say why, e.g. --comment 'retention too low'")
    return _decide(tracking_uri, name, version, _who(reviewer, "--reviewer"), comment, audit_log_path, "rejected")


def promote(tracking_uri: str, name: str, version: str | int, *, by: str,
            audit_log_path: Path, public_key: bytes) -> reg.VersionInfo:
    """Move ``champion`` to an approved, gate-passing version whose artifacts still match and carry
    a model signature by ``public_key`` (the trusted key, PEM)."""
    by = _who(by, "--by")
    info = reg.get_version(tracking_uri, name, version)
    label = f"{name} v{info.version}"
    if info.tag("approval") != "approved":
        raise ApprovalRefused(f"{label}: is {info.tag('approval', 'pending')}, not approved; "
                              f"run `mergeops approve {name} {info.version} --reviewer WHO` first")
    if info.tag("gate_verdict") != "pass" or info.tag("audit_verdict") != "pass":
        raise ApprovalRefused(f"{label}: gates or audit did not pass; it cannot be promoted")
    if "champion" in info.aliases:
        raise ApprovalRefused(f"{label}: is already the champion")
    lineage = reg.load_lineage(tracking_uri, info)
    reg.check_model_artifact(tracking_uri, info, lineage, public_key=public_key)

    at = _now()
    previous = reg.model_tags(tracking_uri, name)
    n = 1 + sum(1 for k in previous if k.startswith(reg.TAG + "champion."))
    old = next((reg.get_version(tracking_uri, name, v) for v in _champion(tracking_uri, name)), None)
    if old is not None:
        reg.set_tags(tracking_uri, old, {"superseded_by": info.version, "superseded_at": at})
    reg.set_tags(tracking_uri, info, {"promoted_by": by, "promoted_at": at})
    reg.set_model_tag(tracking_uri, name, f"champion.{n}",
                      json.dumps({"version": info.version, "by": by, "at": at}, sort_keys=True))
    reg.set_alias(tracking_uri, info, "champion")
    reg.record_event(tracking_uri, name, info.version, audit_log_path, "promoted", by=by,
                     previous=old.version if old else None, content_id=info.tag("content_id"))
    return reg.get_version(tracking_uri, name, info.version)


def _champion(tracking_uri: str, name: str) -> list[str]:
    try:
        info = reg.resolve(tracking_uri, f"{name}@champion")
    except RegistryError:  # no champion yet
        return []
    return [info.version]
