"""MLflow, behind a small surface: register a candidate, mirror the audit log, read versions.

MLflow is imported only here, in ``registry/mlflow_versions.py`` (reading and tagging versions;
re-exported below so callers need one module) and in ``registry/search_runs.py`` (an evolutionary
search's run). We use ``MlflowClient`` with an explicit tracking
URI (never the fluent API's global state), aliases instead of the deprecated stages, and
``create_model_version`` with the run's model artifact as the source (``mlflow.register_model``
refuses a plain artifact dir that is not an MLflow-flavoured model).

Registration logs one run holding the model dir, its signature, ``lineage.json``, the evaluation
table and plots, the audit reports and the model card, then a model version tagged with the
lineage's key facts (see ``_version_tags``) and the alias ``candidate``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

from merge.faults import crash_point
from registry import journal
from registry.audit_log import AuditLog
from registry.errors import AuditLogTampered, LineageError, RegistryError
from registry.identity import Actor
from registry.keys import SigningKey
from registry.lineage import LineageRecord
from registry.mlflow_versions import (  # noqa: F401  (re-exported: the registry's one entry point)
    SIGNATURE_ARTIFACT,
    TAG,
    VersionInfo,
    check_model_artifact,
    client,
    describe,
    experiment_id,
    download,
    lineage_bytes,
    get_version,
    list_versions,
    load_lineage,
    model_tags,
    resolve,
    set_alias,
    set_model_tag,
    set_tags,
)
from registry.model_card import render_model_card
from registry.model_files import check_model_dir, diff_files, stage_release  # noqa: F401
from registry.model_signature import sign_model
from registry.release_files import write_release_files

EXPERIMENT = "mergeops"
_LOG_TAG = TAG + "log."
_METRIC_SAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def _version_tags(lineage: LineageRecord, lineage_sha: str, audit_log: Path) -> dict[str, str]:
    tags = {
        "content_id": lineage.merged.content_id,
        "recipe_sha256": lineage.recipe.sha256,
        "recipe_method": lineage.recipe.method or "",
        "seed": "" if lineage.seed is None else str(lineage.seed),
        "parents": ",".join(p.content_id for p in lineage.parents),
        "parent_licenses": ",".join(p.license or "unknown" for p in lineage.parents),
        "effective_license": lineage.audit.effective_license or "unknown",
        "audit_verdict": lineage.audit.verdict,
        "leakage_verdict": lineage.leakage_verdict,
        "gate_verdict": lineage.gate_verdict,
        "approval": "pending",
        "requested_by": lineage.requested_by,
        "git_sha": lineage.code.git_sha or "",
        "git_dirty": str(lineage.code.git_dirty).lower(),
        "dvc_rev": lineage.dvc.revision or "",
        "lineage_sha256": lineage_sha,
        "audit_log": str(Path(audit_log).resolve()),
    }
    for kind, record in (("suite", lineage.suite), ("policy", lineage.policy)):
        if record is not None:
            tags |= {kind: record.name, f"{kind}_source": record.source, f"{kind}_sha256": record.sha256,
                     f"{kind}_digest": record.digest}
    for i, parent in enumerate(lineage.parents):
        tags[f"parent.{i}.reference"] = parent.reference
        tags[f"parent.{i}.content_id"] = parent.content_id
        tags[f"parent.{i}.license"] = parent.license or "unknown"
        if parent.repo_id:
            tags[f"parent.{i}.repo_id"], tags[f"parent.{i}.commit"] = parent.repo_id, parent.commit or ""
    for i, stat in enumerate(lineage.statistics):
        tags[f"statistics.{i}.path"], tags[f"statistics.{i}.sha256"] = stat.path, stat.sha256
    return {TAG + k: v for k, v in tags.items()}


def _description(lineage: LineageRecord, name: str) -> str:
    """What the MLflow UI shows on the version page (markdown); the tags hold the same facts."""
    parents = ", ".join(f"{p.reference} ({p.license or 'unknown'}, `{p.content_id[:12]}`)" for p in lineage.parents)
    return (f"Merge of {len(lineage.parents)} parents with `{lineage.recipe.method}` (seed {lineage.seed}), "
            f"content id `{lineage.merged.content_id[:16]}`.\n\nParents: {parents}.\n\n"
            f"Licence {lineage.audit.effective_license or 'unknown'} · audit {lineage.audit.verdict} · "
            f"gates {lineage.gate_verdict} · leakage {lineage.leakage_verdict}. Requested by {lineage.requested_by}."
            f"\n\nFull record: `lineage.json` in this run, or `mergeops lineage {name}@<version>`.")


def _metrics(lineage: LineageRecord) -> dict[str, float]:
    out = {f"score.{d}": v for d, v in lineage.evaluation.scores.items()}
    out |= {f"retention.{d}": v for d, v in lineage.evaluation.retention.items()}
    if lineage.evaluation.normalized_average is not None:
        out["normalized_average"] = lineage.evaluation.normalized_average
    for r in lineage.leakage:
        domain = r.detail.get("eval_domain")
        if r.value is not None:
            out[f"leakage.{r.check}.{r.model}" + (f".{domain}" if domain else "")] = r.value
    return {_METRIC_SAFE.sub("_", k): float(v) for k, v in out.items()}


def register_candidate(
    *,
    tracking_uri: str,
    name: str,
    model_dir: Path,
    lineage: LineageRecord,
    audit_log_path: Path,
    evaluation_files: list[Path] = (),
    audit_reports: list[Path] = (),
    artifact_location: str | None = None,
    license_links: dict[str, str] | None = None,
    requester: Actor | None = None,
    signing_key: SigningKey,
    registration: str | Path | None = None,
) -> VersionInfo:
    """Log one run and one model version for a merged model that passed every step before this.

    The ``model/`` artifact is the merged directory plus its model card, LICENSE and NOTICE
    (registry/release_files.py), whose hashes the lineage records. ``evaluation_files`` (the
    evaluation JSON, plots) go under ``evaluation/``, ``audit_reports`` under ``audit/``, the suite
    and policy under ``settings/``. ``artifact_location`` is the experiment's artifact root when it
    is first created (the embedded sqlite default needs one; a server decides its own).
    ``license_links``: parent content id -> the licence link its card declares. ``requester`` is
    who asked (the governance service passes the authenticated user; default: the lineage's
    ``requested_by``, unauthenticated).    ``signing_key``
    signs the whole ``model/`` dir (registry/model_signature.py); the bundle goes to
    ``model_signature/model.sig`` and the key's id to the tag ``mergeops.signature_key_id``.

    Each step is journaled (registry/journal.py): ``registration`` is the journal file of an
    attempt the caller began (and advanced past ``artifacts``), else one is begun here. On
    success the attempt is done; on an error it is rolled back at once (registry/recovery.py), and
    a kill leaves it for the next run or ``mergeops repair``.
    """
    manifest = check_model_dir(model_dir)
    if manifest["content_id"] != lineage.merged.content_id:
        raise LineageError(f"{model_dir}: content id {manifest['content_id'][:12]} is not the lineage's "
                           f"merged content id {lineage.merged.content_id[:12]}; rebuild the lineage")
    attempt = journal.held(registration) if registration else journal.begin(audit_log_path, name,
                                                                            lineage.merged.content_id)
    try:
        # Named with the pid, so a killed run's stage is found and removed (flows/cleanup.py).
        with tempfile.TemporaryDirectory(prefix=f".register-{os.getpid()}-", dir=Path(model_dir).parent) as stage:
            release_dir = stage_release(Path(model_dir), [f["path"] for f in manifest["files"]], Path(stage) / "model")
            lineage = lineage.model_copy(update={"release_files": write_release_files(
                lineage, release_dir, name=name, license_links=license_links)})
            signature = (sign_model(release_dir, signing_key), signing_key.key_id)
            info = _register(tracking_uri, name, release_dir, lineage, audit_log_path, evaluation_files,
                             audit_reports, artifact_location, signature, requester or Actor(lineage.requested_by),
                             attempt)
    except BaseException:
        abandon(tracking_uri, audit_log_path, attempt)
        raise
    attempt.done()
    return info


def abandon(tracking_uri: str, audit_log_path: Path, attempt: journal.Registration) -> None:
    """A registration failed in this (live) process: settle it now, or leave it to the next run."""
    from registry.recovery import settle

    if attempt.finished:
        return
    try:
        settle(tracking_uri, audit_log_path, attempt)
    except Exception:  # noqa: BLE001 (the registration's own error is the one to report)
        attempt.release()


def approval_rules(lineage: LineageRecord) -> dict:
    """The version's ``approval:`` policy and intended use, signed into its ``registered`` entry so
    every later decision is checked against what was registered, not against editable tags."""
    from evaluation.gates import parse_gate_policy
    from merge.bounded import last_mapping, load_yaml

    doc = load_yaml(lineage.policy.text, what="policy") if lineage.policy is not None else None
    recipe = last_mapping(lineage.recipe.text, what="recipe") if lineage.recipe.text else {}
    intended_use = recipe.get("intended_use")
    policy = parse_gate_policy(doc if isinstance(doc, dict) else None, "policy").approval
    return {"intended_use": intended_use or "research",
            "approval": {"reviewers": policy.reviewers,
                         "require_authentication": policy.needs_authentication(intended_use)}}


def _registered_data(lineage: LineageRecord, run_id: str, lineage_sha: str) -> dict:
    return {"content_id": lineage.merged.content_id, "run_id": run_id, "requested_by": lineage.requested_by,
            "gate_verdict": lineage.gate_verdict, "audit_verdict": lineage.audit.verdict,
            "leakage_verdict": lineage.leakage_verdict, "lineage_sha256": lineage_sha, **approval_rules(lineage)}


def _register(tracking_uri: str, name: str, model_dir: Path, lineage: LineageRecord, audit_log_path: Path,
              evaluation_files, audit_reports, artifact_location: str | None, signature: tuple[bytes, str],
              requester: Actor, attempt: journal.Registration) -> VersionInfo:
    c = client(tracking_uri)
    lineage_bytes = lineage.to_json_bytes()
    lineage_sha = hashlib.sha256(lineage_bytes).hexdigest()
    run = c.create_run(experiment_id(c, EXPERIMENT, artifact_location), run_name=f"{name}-{lineage.merged.content_id[:12]}",
                       tags={TAG + "content_id": lineage.merged.content_id, TAG + "model": name,
                             TAG + "attempt": attempt.attempt})  # how recovery finds it (registry/recovery.py)
    run_id = run.info.run_id
    try:
        params = {"recipe_sha256": lineage.recipe.sha256, "seed": lineage.seed, "method": lineage.recipe.method,
                  "recipe_name": lineage.recipe.name, "parents": len(lineage.parents),
                  "requested_by": lineage.requested_by, "git_sha": lineage.code.git_sha}
        now = int(time.time() * 1000)
        c.log_batch(run_id, params=[Param(k, "" if v is None else str(v)) for k, v in params.items()],
                    metrics=[Metric(k, v, now, 0) for k, v in _metrics(lineage).items()])
        c.log_artifacts(run_id, str(model_dir), "model")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "lineage.json").write_bytes(lineage_bytes)
            c.log_artifact(run_id, str(Path(tmp) / "lineage.json"))
            card = Path(tmp) / "model_card" / "README.md"
            card.parent.mkdir()
            card.write_text(render_model_card(lineage, name=name))
            c.log_artifacts(run_id, str(card.parent), "model_card")
            settings = Path(tmp) / "settings"
            settings.mkdir()
            for kind, record in (("suite", lineage.suite), ("policy", lineage.policy)):
                if record is not None:
                    (settings / f"{kind}.yaml").write_text(record.text, encoding="utf-8")
            if any(settings.iterdir()):
                c.log_artifacts(run_id, str(settings), "settings")
            sig = Path(tmp) / SIGNATURE_ARTIFACT
            sig.parent.mkdir()
            sig.write_bytes(signature[0])
            c.log_artifacts(run_id, str(sig.parent), sig.parent.name)
        for path in evaluation_files:
            c.log_artifact(run_id, str(path), "evaluation")
        for path in audit_reports:
            c.log_artifact(run_id, str(path), "audit")
        c.set_terminated(run_id)
    except BaseException:
        c.set_terminated(run_id, status="FAILED")
        raise
    attempt.advance("run", run_id=run_id)
    try:
        c.create_registered_model(name, tags={TAG + "managed": "true"},
                                  description="A merged model governed by mergeops: see each version's lineage.")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    c.set_registered_model_tag(name, TAG + "audit_log", str(Path(audit_log_path).resolve()))
    mv = c.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run_id,
                                tags=_version_tags(lineage, lineage_sha, audit_log_path)
                                | {TAG + "signature_key_id": signature[1]},
                                description=_description(lineage, name))
    crash_point("registry.version-created")  # (before its journal step: recovery finds it by run id)
    attempt.advance("version", version=str(mv.version))
    c.set_registered_model_alias(name, "candidate", mv.version)
    entry = record_event(tracking_uri, name, mv.version, audit_log_path, "registered", actor=requester,
                         **_registered_data(lineage, run_id, lineage_sha))
    attempt.advance("logged", seq=entry["seq"])
    return get_version(tracking_uri, name, mv.version)


def mirror_decision(tracking_uri: str, info: VersionInfo, entry: dict) -> None:
    """Copy a logged approval or rejection into the version's tags (for search and the UI)."""
    approvals = json.loads(info.tag("approvals", "[]") or "[]") + [{
        "decision": entry["event"], "reviewer": entry["actor"], "at": entry["at"],
        "comment": entry["data"].get("comment", ""), "authenticated": entry.get("authenticated", False)}]
    set_tags(tracking_uri, info, {
        "approval": entry["event"], "decided_by": entry["actor"], "decided_at": entry["at"],
        "decision_comment": entry["data"].get("comment", ""), "approvals": json.dumps(approvals, sort_keys=True),
        "decided_authenticated": str(bool(entry.get("authenticated"))).lower()})
    _lineage_revision(tracking_uri, info, approvals)


def _lineage_revision(tracking_uri: str, info: VersionInfo, approvals: list[dict]) -> None:
    """``lineage-revisions/lineage.r<n>.json``: the registered record with its approvals filled in.
    The first ``lineage.json`` is kept as registered (its hash is signed in the log)."""
    from registry.lineage import ApprovalRecord

    record = LineageRecord.from_json_bytes(lineage_bytes(tracking_uri, info))
    revised = record.model_copy(update={"approvals": [ApprovalRecord(**a) for a in approvals]})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"lineage.r{len(approvals) + 1}.json"
        path.write_bytes(revised.to_json_bytes())
        client(tracking_uri).log_artifact(info.run_id, str(path), "lineage-revisions")


def mirror_promotion(tracking_uri: str, info: VersionInfo, previous: str | None, entry: dict) -> None:
    """Copy a logged promotion into tags and the ``champion`` alias (for search, the UI, serving)."""
    at, by = entry["at"], entry["actor"]
    if previous is not None:
        set_tags(tracking_uri, get_version(tracking_uri, info.name, previous),
                 {"superseded_by": info.version, "superseded_at": at})
    set_tags(tracking_uri, info, {"promoted_by": by, "promoted_at": at})
    record = json.dumps({"version": info.version, "by": by, "at": at}, sort_keys=True)
    history = [v for k, v in model_tags(tracking_uri, info.name).items() if k.startswith(TAG + "champion.")]
    if record not in history:  # (mirrored again by `mergeops repair` after a kill: once)
        set_model_tag(tracking_uri, info.name, f"champion.{len(history) + 1}", record)
    set_alias(tracking_uri, info, "champion")


def _has_registered_entry(tags: dict[str, str]) -> bool:
    """Whether a version's tags hold the MLflow copy of its ``registered`` audit-log entry."""
    return any(k.startswith(_LOG_TAG) and v.startswith("registered:") for k, v in tags.items())


def complete_registration(tracking_uri: str, info: VersionInfo, audit_log_path: Path, *, sign: bool = True) -> bool:
    """Finish a registration a killed run left half done: the version exists, but its ``registered``
    audit-log entry, the entry's MLflow copy or the ``candidate`` alias does not. True when
    something was added. ``sign=False``: only copy an entry the log holds; a version the log never
    registered is refused (only a journaled attempt, registry/recovery.py, may be signed now)."""
    if _has_registered_entry(info.tags):
        return False
    if not sign:
        log = audit_log_path if isinstance(audit_log_path, AuditLog) else AuditLog(audit_log_path)
        if not any(e["event"] == "registered" and e["data"].get("model") == info.name
                   and e["data"].get("version") == str(info.version) for e in log.entries()):
            raise AuditLogTampered(f"{info.name} v{info.version}: holds these bytes, but the audit log has no "
                                   "`registered` entry for it and no registration of it was journaled (a version "
                                   "made outside mergeops?); delete that version in MLflow and run again")
    c = client(tracking_uri)
    try:  # (a search of versions does not return their aliases; resolving one does)
        resolve(tracking_uri, f"{info.name}@candidate")
    except RegistryError:
        c.set_registered_model_alias(info.name, "candidate", info.version)
    log = audit_log_path if isinstance(audit_log_path, AuditLog) else AuditLog(audit_log_path)
    logged = [e for e in log.entries() if e["event"] == "registered"
              and e["data"].get("model") == info.name and e["data"].get("version") == str(info.version)]
    if logged:  # killed after the log entry, before its copy: mirror it, never log twice
        c.set_model_version_tag(info.name, info.version, f"{_LOG_TAG}{logged[0]['seq']}", f"registered:{logged[0]['hash']}")
    else:  # the run's own lineage.json, not the tags, says what was registered
        stored = lineage_bytes(tracking_uri, info)
        lineage = LineageRecord.from_json_bytes(stored)
        record_event(tracking_uri, info.name, info.version, log, "registered", actor=Actor(lineage.requested_by),
                     completed_after_interruption=True,
                     **_registered_data(lineage, info.run_id, hashlib.sha256(stored).hexdigest()))
    return True


def record_event(tracking_uri: str, name: str, version: str | None, audit_log: Path | AuditLog, event: str, *,
                 actor: Actor | None = None, check=None, **data) -> dict:
    """Append a signed entry to the audit log and mirror its ``(seq, hash)`` into MLflow.

    ``actor`` did it (default: this machine's user, unauthenticated); ``check`` is the log's
    compare-and-set (registry/audit_log.py). The copy goes onto the model version, or with
    ``version=None`` (e.g. ``remerge_triggered``) onto the registered model when it exists.
    """
    extra = {} if version is None else {"version": str(version)}
    log = audit_log if isinstance(audit_log, AuditLog) else AuditLog(audit_log)
    entry = log.append(event, actor=actor, check=check, model=name, **extra, **data)
    crash_point(f"log.{event}")  # logged, not yet mirrored: registry/recovery.py completes the copy
    c, key, value = client(tracking_uri), f"{_LOG_TAG}{entry['seq']}", f"{event}:{entry['hash']}"
    try:
        if version is None:
            c.set_registered_model_tag(name, key, value)
        else:
            c.set_model_version_tag(name, str(version), key, value)
    except MlflowException as exc:
        if version is not None or exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    return entry


def verify_audit_log(tracking_uri: str | None, audit_log: Path | AuditLog, where: str | None = None) -> tuple[int, int]:
    """Check the log's chain and signatures and MLflow's copy of it (registry/log_check.py); return
    ``(entries, anchors)``, or raise AuditLogTampered naming every drift.

    With ``tracking_uri`` None, or an embedded sqlite store that does not exist yet, only the
    log itself is checked.
    """
    from registry.log_check import check_log

    if tracking_uri and tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        tracking_uri = None
    log = audit_log if isinstance(audit_log, AuditLog) else AuditLog(audit_log)
    result = check_log(tracking_uri, log, where)
    if result.drifts:
        raise AuditLogTampered("; ".join(result.drifts) if len(result.drifts) == 1 else
                               f"{len(result.drifts)} differences between MLflow and the audit log:\n  "
                               + "\n  ".join(result.drifts))
    return result.entries, result.anchors
