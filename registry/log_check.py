"""`mergeops log verify`: the audit log checked on its own, then MLflow's mirror checked against it.

The log decides state (registry/approvals.py); MLflow's tags and aliases copy it for search, the
UI and serving. Anyone with rights on the server can edit the copy (the UI's pencil, "Promote
model", a script with ``MlflowClient``), so each governed version's copy is compared with the log
and every difference is named:
- the chain and every signature (registry/audit_log.py, with the pinned public key);
- each ``(seq, hash)`` mirrored into MLflow matches the log (a truncated or rewritten log);
- each version has its ``registered`` entry (a registration cut short, or a version made by hand);
- ``approval`` / ``decided_by`` tags equal the log's decision (a forged approval);
- the registration facts (content id, lineage hash, requester, verdicts) equal the signed entry;
- the ``champion`` alias points where the log's last ``promoted`` entry says (a forged promotion).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from registry.approvals import champion_entry, decision_entry, registered_entry
from registry.audit_log import AuditLog
from registry.errors import AuditLogTampered
from registry.mlflow_versions import TAG, client

_LOG_TAG = TAG + "log."
# version tags copied from the signed `registered` entry: tag -> the entry's field
_REGISTERED_FACTS = {"content_id": "content_id", "lineage_sha256": "lineage_sha256", "gate_verdict": "gate_verdict",
                     "audit_verdict": "audit_verdict", "leakage_verdict": "leakage_verdict"}


@dataclass
class LogCheck:
    entries: int = 0
    anchors: int = 0
    versions: int = 0
    drifts: list[str] = field(default_factory=list)


def _version_drifts(label: str, tags: dict[str, str], entries: list[dict], name: str, version: str) -> list[str]:
    registered = registered_entry(entries, name, version)
    if registered is None:
        return [f"{label}: in MLflow without a `registered` entry in the log (a registration cut short, or a version "
                "made outside mergeops); run `mergeops repair` or its recipe again"]
    out = []
    data = registered["data"]
    for tag, key in _REGISTERED_FACTS.items():
        if key in data and tags.get(TAG + tag) != data[key]:
            out.append(f"{label}: tag {TAG}{tag} is {tags.get(TAG + tag)!r}, the signed registration says "
                       f"{data[key]!r} (the tag was edited)")
    if "sig" in registered and tags.get(TAG + "requested_by") not in (data.get("requested_by"), registered["actor"]):
        out.append(f"{label}: tag {TAG}requested_by is {tags.get(TAG + 'requested_by')!r}, the log says "
                   f"{registered['actor']!r} (the tag was edited)")
    decided = decision_entry(entries, name, version)
    state = decided["event"] if decided else "pending"
    if tags.get(TAG + "approval", "pending") != state:
        out.append(f"{label}: tag {TAG}approval is {tags.get(TAG + 'approval')!r}, the log says {state!r} "
                   "(a forged decision: only the log decides)")
    elif decided and tags.get(TAG + "decided_by") != decided["actor"]:
        out.append(f"{label}: tag {TAG}decided_by is {tags.get(TAG + 'decided_by')!r}, the log says "
                   f"{decided['actor']!r} (the tag was edited)")
    return out


def check_log(tracking_uri: str | None, log: AuditLog, where: str | None = None) -> LogCheck:
    """Check ``log`` and, with a tracking URI, MLflow's copy of it; ``where`` is the log's name in
    the ``mergeops.audit_log`` tags (default: its resolved path)."""
    where = where or str(Path(log.path).resolve())
    result = LogCheck()
    anchors: list[tuple[int, str, str]] = []
    governed: dict[str, list[tuple[str, dict]]] = {}
    if tracking_uri:
        c = client(tracking_uri)
        for rm in c.search_registered_models(max_results=1000):
            if rm.tags.get(TAG + "audit_log") == where:
                anchors += _anchors(rm.tags, f"MLflow {rm.name}")
                governed.setdefault(rm.name, [])
        for mv in c.search_model_versions(max_results=10_000):
            if mv.tags.get(TAG + "audit_log") == where:
                anchors += _anchors(mv.tags, f"MLflow {mv.name} v{mv.version}")
                governed.setdefault(mv.name, []).append((str(mv.version), dict(mv.tags)))
    try:
        result.entries, _ = log.verify(anchors=sorted(anchors))
    except AuditLogTampered as exc:
        result.drifts.append(str(exc))
        return result
    result.anchors = len(anchors)
    entries = log.entries() if governed else []
    for name, versions in sorted(governed.items()):
        for version, tags in sorted(versions, key=lambda v: int(v[0])):
            result.versions += 1
            result.drifts += _version_drifts(f"{name} v{version}", tags, entries, name, version)
        alias = client(tracking_uri).get_registered_model(name).aliases.get("champion")
        promoted = champion_entry(entries, name)
        logged = promoted["data"].get("version") if promoted else None
        if (str(alias) if alias is not None else None) != logged:
            result.drifts.append(
                f"{name}: alias champion is {'v' + str(alias) if alias is not None else 'unset'}, the log promoted "
                f"{'v' + logged if logged else 'nothing'} (a forged promotion: only `mergeops promote` moves it)")
    return result


def _anchors(tags: dict[str, str], label: str) -> list[tuple[int, str, str]]:
    out = []
    for key, value in tags.items():
        if key.startswith(_LOG_TAG) and key[len(_LOG_TAG):].isdigit() and ":" in value:
            out.append((int(key[len(_LOG_TAG):]), value.split(":", 1)[1], label))
    return out
