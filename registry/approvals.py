"""Human decisions on a registered version: approve, reject, promote, decided by the audit log.

State is what the signed audit log says (registry/audit_log.py), never what MLflow's tags or
aliases say: those are a mirror for search and the UI, written after the log entry, and anyone with
rights on the server can edit them (``mergeops log verify`` reports each drift). The rules, checked
against the log before anything is written:
- the version has a signed ``registered`` entry; it holds the requester, the verdicts, the content
  id, the lineage hash and the approval rules of the version's policy (``approval:``);
- four-eyes: the reviewer is never the requester, compared as normalised ids (registry/identity.py);
  with ``approval.reviewers`` set, only those people decide;
- ``approval.require_authentication`` (by default true for ``intended_use: commercial``) refuses
  an unauthenticated id (embedded mode) for approval and promotion;
- a version whose audit, gates or leakage checks failed cannot be approved;
- a version is decided once. The check runs under the log's lock (a compare-and-set), so an
  approve and a reject racing on one version give one decision, recorded once;
- ``champion`` moves only to a version with a signed approval for its content id, whose model
  artifact, downloaded and re-hashed, matches the lineage the ``registered`` entry signed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from merge.errors import UsageError
from registry import mlflow_registry as reg
from registry.audit_log import AuditLog
from registry.errors import ApprovalRefused
from registry.identity import Actor, normalise
from registry.keys import default_key_path, trusted_public_key
from registry.lineage import LineageRecord


def _actor(who: str | Actor | None, option: str) -> Actor:
    if isinstance(who, Actor):
        normalise(who.id, option)
        return who
    if who is None or not who.strip():
        raise UsageError(f"{option} is empty; name the person, e.g. {option} alice@example.com")
    return Actor.typed(who, option)


def open_log(audit_log_path: Path, public_key: bytes | None = None) -> AuditLog:
    """The audit log, checked with ``public_key`` (default: the public half of the key that signs it)."""
    path = Path(audit_log_path)
    return AuditLog(path, public=public_key or trusted_public_key(None, default_key_path(path)))


def _about(entry: dict, name: str, version: str) -> bool:
    data = entry.get("data") or {}
    return data.get("model") == name and data.get("version") == str(version)


def registered_entry(entries: list[dict], name: str, version: str) -> dict | None:
    return next((e for e in entries if e["event"] == "registered" and _about(e, name, version)), None)


def decision_entry(entries: list[dict], name: str, version: str) -> dict | None:
    return next((e for e in entries if e["event"] in ("approved", "rejected") and _about(e, name, version)), None)


def champion_entry(entries: list[dict], name: str) -> dict | None:
    """The latest ``promoted`` entry of a model: the champion the log decided."""
    return next((e for e in reversed(entries) if e["event"] == "promoted" and (e.get("data") or {}).get("model") == name),
                None)


def _registered(entries: list[dict], info: reg.VersionInfo) -> dict:
    entry = registered_entry(entries, info.name, info.version)
    label = f"{info.name} v{info.version}"
    if entry is None:
        raise ApprovalRefused(f"{label}: the audit log has no `registered` entry for it (a registration cut short, or "
                              "a version made outside mergeops); run `mergeops repair` or its recipe again")
    if "sig" not in entry or "lineage_sha256" not in entry["data"]:
        raise ApprovalRefused(f"{label}: registered before signed governance; run its recipe again to register a "
                              "version the log can decide")
    return entry


def _rules(entry: dict) -> tuple[list[str], bool]:
    rules = entry["data"].get("approval") or {}
    return list(rules.get("reviewers") or []), bool(rules.get("require_authentication"))


def _check_actor(label: str, actor: Actor, entry: dict, doing: str) -> None:
    reviewers, need_auth = _rules(entry)
    if need_auth and not actor.authenticated:
        raise ApprovalRefused(f"{label}: its policy requires an authenticated {doing} (approval.require_authentication; "
                              f"{entry['data'].get('intended_use') or 'this'} use) and {actor.id} is not authenticated: "
                              "decide through the governance service (service_url) with your MLflow credentials")
    if doing == "reviewer" and reviewers and actor.key not in {normalise(r, "approval.reviewers") for r in reviewers}:
        raise ApprovalRefused(f"{label}: {actor.id} is not a reviewer under its policy (approval.reviewers: "
                              f"{', '.join(reviewers)})")


def _decide(tracking_uri: str, name: str, version: str | int, actor: Actor, comment: str, log: AuditLog,
            decision: str) -> reg.VersionInfo:
    info = reg.get_version(tracking_uri, name, version)
    label = f"{name} v{info.version}"
    entry = _registered(log.entries(), info)
    requester = entry["actor"]
    if actor.key == normalise(requester, "requester"):
        raise ApprovalRefused(f"{label}: {actor.id} requested this version and cannot review it; "
                              "ask another reviewer (four-eyes rule)")
    _check_actor(label, actor, entry, "reviewer")

    def once(entries: list[dict]) -> None:  # run again under the log's lock: the compare of compare-and-set
        done = decision_entry(entries, name, info.version)
        if done is not None:
            raise ApprovalRefused(f"{label}: already {done['event']} by {done['actor']}; register a new version "
                                  "to decide again")

    once(log.entries())
    if decision == "approved":
        failed = [k for k in ("audit_verdict", "gate_verdict", "leakage_verdict") if entry["data"].get(k) != "pass"]
        if failed:
            raise ApprovalRefused(f"{label}: cannot be approved, {', '.join(failed)} not pass; "
                                  "fix the recipe or parents and run the pipeline again")

    logged = reg.record_event(tracking_uri, name, info.version, log, decision, actor=actor, check=once,
                              requested_by=requester, comment=comment, content_id=entry["data"]["content_id"])
    reg.mirror_decision(tracking_uri, info, logged)
    return reg.get_version(tracking_uri, name, info.version)


def approve(tracking_uri: str, name: str, version: str | int, *, reviewer: str | Actor, comment: str = "",
            audit_log_path: Path, public_key: bytes | None = None) -> reg.VersionInfo:
    """Approve a gate-passing version; the reviewer must not be its requester."""
    return _decide(tracking_uri, name, version, _actor(reviewer, "--reviewer"), comment,
                   open_log(audit_log_path, public_key), "approved")


def reject(tracking_uri: str, name: str, version: str | int, *, reviewer: str | Actor, comment: str,
           audit_log_path: Path, public_key: bytes | None = None) -> reg.VersionInfo:
    """Reject a version; a reason is required."""
    if not (comment or "").strip():
        raise UsageError("--comment is required when rejecting; say why, e.g. --comment 'retention too low'")
    return _decide(tracking_uri, name, version, _actor(reviewer, "--reviewer"), comment,
                   open_log(audit_log_path, public_key), "rejected")


def promote(tracking_uri: str, name: str, version: str | int, *, by: str | Actor, audit_log_path: Path,
            public_key: bytes | None = None) -> reg.VersionInfo:
    """Move ``champion`` to a version the log approved, whose artifacts still match what it signed."""
    actor, log = _actor(by, "--by"), open_log(audit_log_path, public_key)
    info = reg.get_version(tracking_uri, name, version)
    label = f"{name} v{info.version}"
    entries = log.entries()
    registered = _registered(entries, info)
    decided = decision_entry(entries, name, info.version)
    if decided is None or decided["event"] != "approved":
        state = decided["event"] if decided else "pending"
        raise ApprovalRefused(f"{label}: the audit log holds no approval for it ({state}); "
                              f"run `mergeops approve {name} {info.version}` as a reviewer first")
    if decided["data"].get("content_id") != registered["data"]["content_id"]:
        raise ApprovalRefused(f"{label}: the approval is for content {str(decided['data'].get('content_id'))[:16]}, "
                              f"not the registered {registered['data']['content_id'][:16]}")
    _check_actor(label, actor, registered, "promoter")
    if not decided.get("authenticated") and _rules(registered)[1]:
        raise ApprovalRefused(f"{label}: its approval by {decided['actor']} was not authenticated, and its policy "
                              "requires an authenticated reviewer")
    current = champion_entry(entries, name)
    if current is not None and current["data"].get("version") == str(info.version):
        raise ApprovalRefused(f"{label}: is already the champion")
    stored = reg.lineage_bytes(tracking_uri, info)
    lineage = LineageRecord.from_json_bytes(stored)
    reg.check_model_artifact(tracking_uri, info, lineage, public_key=log.public)  # bytes, manifest, signature
    if hashlib.sha256(stored).hexdigest() != registered["data"]["lineage_sha256"]:
        raise ApprovalRefused(f"{label}: its lineage.json is not the one the audit log signed at registration; "
                              "the run's artifacts were edited")
    if lineage.merged.content_id != registered["data"]["content_id"]:
        raise ApprovalRefused(f"{label}: its lineage names content {lineage.merged.content_id[:16]}, the log "
                              f"registered {registered['data']['content_id'][:16]}")

    def unchanged(entries: list[dict]) -> None:  # nobody promoted meanwhile
        now = champion_entry(entries, name)
        if (now and now["seq"]) != (current and current["seq"]):
            raise ApprovalRefused(f"{label}: {name} was promoted meanwhile (v{now['data'].get('version')}); "
                                  "look again before promoting")

    previous = current["data"].get("version") if current else None
    logged = reg.record_event(tracking_uri, name, info.version, log, "promoted", actor=actor, check=unchanged,
                              previous=previous, content_id=registered["data"]["content_id"])
    reg.mirror_promotion(tracking_uri, info, previous, logged)
    return reg.get_version(tracking_uri, name, info.version)


def state(entries: list[dict], name: str, version: str) -> str:
    """``approved``, ``rejected`` or ``pending``, as the log holds it."""
    entry = decision_entry(entries, name, str(version))
    return entry["event"] if entry else "pending"


def approvals_json(entries: list[dict], name: str, version: str) -> str:
    """The decisions on a version, as the lineage and tags show them."""
    return json.dumps([{"decision": e["event"], "reviewer": e["actor"], "at": e["at"],
                        "comment": e["data"].get("comment", ""), "authenticated": e.get("authenticated", False)}
                       for e in entries if e["event"] in ("approved", "rejected") and _about(e, name, version)],
                      sort_keys=True)


def decided_champion(tracking_uri: str, name: str, log: AuditLog) -> str | None:
    """The version the log made champion (None before the first promotion)."""
    entry = champion_entry(log.entries(), name)
    return entry["data"].get("version") if entry else None

