"""MLflow, behind a small surface: register a candidate, read a version, tag it, move an alias.

This is the only module that imports MLflow. It uses ``MlflowClient`` with an explicit tracking
URI (never the fluent API's global state), aliases instead of the deprecated stages, and
``create_model_version`` with the run's model artifact as the source (``mlflow.register_model``
refuses a plain artifact dir that is not an MLflow-flavoured model).

Registration logs one run holding the model dir, ``lineage.json``, the evaluation table and
plots, the audit reports and the model card, then a model version tagged with the lineage's key
facts (see ``_version_tags``) and the alias ``candidate``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from merge.manifest import MANIFEST_NAME, FileEntry, content_id_of, file_entries  # noqa: E402
from registry.audit_log import AuditLog  # noqa: E402
from registry.errors import ArtifactMismatch, LineageError, RegistryError  # noqa: E402
from registry.lineage import ApprovalRecord, LineageRecord  # noqa: E402
from registry.model_card import render_model_card  # noqa: E402

EXPERIMENT = "mergeops"
TAG = "mergeops."  # every tag we write starts with this
_LOG_TAG = TAG + "log."
_METRIC_SAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


@dataclass(frozen=True)
class VersionInfo:
    """What the rest of registry/ needs from an MLflow model version (no MLflow types leak out)."""

    name: str
    version: str
    run_id: str
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]

    def tag(self, key: str, default: str | None = None) -> str | None:
        return self.tags.get(TAG + key, default)


def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _experiment_id(c: MlflowClient, artifact_location: str | None) -> str:
    exp = c.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(EXPERIMENT, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by a concurrent writer
        return c.get_experiment_by_name(EXPERIMENT).experiment_id


def check_model_dir(model_dir: Path) -> dict:
    """Re-hash ``model_dir`` against its ``mergeops.manifest.json``; return the manifest."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise RegistryError(f"{model_dir}: no {MANIFEST_NAME}; register only directories written by `mergeops merge`")
    manifest = json.loads(path.read_text())
    diff_files([FileEntry(**f) for f in manifest["files"]], file_entries(Path(model_dir)), where=str(model_dir))
    if content_id_of(file_entries(Path(model_dir))) != manifest["content_id"]:
        raise ArtifactMismatch(f"{model_dir}: content id differs from its manifest")
    return manifest


def diff_files(expected: list[FileEntry], actual: list[FileEntry], *, where: str) -> None:
    """Raise ArtifactMismatch naming every added, missing or changed file."""
    want, have = {e.path: e for e in expected}, {e.path: e for e in actual}
    changed = sorted(p for p in want.keys() & have.keys() if want[p] != have[p])
    missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    parts = [f"{label}: {', '.join(paths)}" for label, paths in
             (("changed", changed), ("missing", missing), ("unexpected", extra)) if paths]
    if parts:
        raise ArtifactMismatch(f"{where} does not match its manifest ({'; '.join(parts)})")


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
        "dvc_rev": lineage.dvc.revision or "",
        "lineage_sha256": lineage_sha,
        "audit_log": str(Path(audit_log).resolve()),
    }
    for i, parent in enumerate(lineage.parents):
        tags[f"parent.{i}.reference"] = parent.reference
        tags[f"parent.{i}.content_id"] = parent.content_id
        tags[f"parent.{i}.license"] = parent.license or "unknown"
    return {TAG + k: v for k, v in tags.items()}


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
) -> VersionInfo:
    """Log one run and one model version for a merged model that passed every step before this.

    ``evaluation_files`` (the evaluation JSON, results table, plots) go under ``evaluation/``,
    ``audit_reports`` under ``audit/``. ``artifact_location`` is the experiment's artifact root
    when it is first created (the embedded sqlite default needs one; a server decides its own).
    """
    manifest = check_model_dir(model_dir)
    if manifest["content_id"] != lineage.merged.content_id:
        raise LineageError(f"{model_dir}: content id {manifest['content_id'][:12]} is not the lineage's "
                           f"merged content id {lineage.merged.content_id[:12]}; rebuild the lineage")
    c = client(tracking_uri)
    lineage_bytes = lineage.to_json_bytes()
    lineage_sha = hashlib.sha256(lineage_bytes).hexdigest()
    run = c.create_run(_experiment_id(c, artifact_location), run_name=f"{name}-{lineage.merged.content_id[:12]}",
                       tags={TAG + "content_id": lineage.merged.content_id, TAG + "model": name})
    run_id = run.info.run_id
    try:
        params = {"recipe_sha256": lineage.recipe.sha256, "seed": lineage.seed, "method": lineage.recipe.method,
                  "recipe_name": lineage.recipe.name, "parents": len(lineage.parents),
                  "requested_by": lineage.requested_by, "git_sha": lineage.code.git_sha}
        for key, value in params.items():
            c.log_param(run_id, key, "" if value is None else str(value))
        for key, value in _metrics(lineage).items():
            c.log_metric(run_id, key, value)
        c.log_artifacts(run_id, str(model_dir), "model")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "lineage.json").write_bytes(lineage_bytes)
            c.log_artifact(run_id, str(Path(tmp) / "lineage.json"))
            card = Path(tmp) / "model_card" / "README.md"
            card.parent.mkdir()
            card.write_text(render_model_card(lineage, name=name))
            c.log_artifacts(run_id, str(card.parent), "model_card")
        for path in evaluation_files:
            c.log_artifact(run_id, str(path), "evaluation")
        for path in audit_reports:
            c.log_artifact(run_id, str(path), "audit")
        c.set_terminated(run_id)
    except BaseException:
        c.set_terminated(run_id, status="FAILED")
        raise
    try:
        c.create_registered_model(name, tags={TAG + "managed": "true"})
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = c.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run_id,
                                tags=_version_tags(lineage, lineage_sha, audit_log_path),
                                description=f"merge of {len(lineage.parents)} parents by {lineage.recipe.method}")
    c.set_registered_model_alias(name, "candidate", mv.version)
    record_event(tracking_uri, name, mv.version, audit_log_path, "registered",
                 content_id=lineage.merged.content_id, run_id=run_id, requested_by=lineage.requested_by,
                 gate_verdict=lineage.gate_verdict)
    return get_version(tracking_uri, name, mv.version)


def record_event(tracking_uri: str, name: str, version: str, audit_log_path: Path, event: str, **data) -> dict:
    """Append to the audit log and mirror the entry's ``(seq, hash)`` onto the model version."""
    entry = AuditLog(audit_log_path).append(event, model=name, version=str(version), **data)
    c = client(tracking_uri)
    c.set_model_version_tag(name, str(version), f"{_LOG_TAG}{entry['seq']}", f"{event}:{entry['hash']}")
    return entry


def audit_anchors(tracking_uri: str, audit_log_path: Path) -> list[tuple[int, str, str]]:
    """Every ``(seq, hash, "NAME vVERSION")`` mirrored into MLflow for this audit log."""
    where = str(Path(audit_log_path).resolve())
    anchors = []
    for mv in client(tracking_uri).search_model_versions(max_results=10_000):
        if mv.tags.get(TAG + "audit_log") != where:
            continue
        for key, value in mv.tags.items():
            if key.startswith(_LOG_TAG):
                anchors.append((int(key[len(_LOG_TAG):]), value.split(":", 1)[1], f"MLflow {mv.name} v{mv.version}"))
    return sorted(anchors)


def _info(mv) -> VersionInfo:
    return VersionInfo(name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source,
                       tags=dict(mv.tags), aliases=tuple(getattr(mv, "aliases", ()) or ()))


def get_version(tracking_uri: str, name: str, version: str | int) -> VersionInfo:
    try:
        return _info(client(tracking_uri).get_model_version(name, str(version)))
    except MlflowException as exc:
        raise RegistryError(f"{name} v{version}: not found in {tracking_uri}; list versions in the MLflow UI") from exc


def resolve(tracking_uri: str, spec: str) -> VersionInfo:
    """``NAME@VERSION``, ``NAME@ALIAS`` or ``NAME`` (the champion, else the latest version)."""
    name, _, ref = spec.partition("@")
    if not name:
        raise RegistryError(f"{spec!r}: expected NAME[@VERSION|@ALIAS]")
    c = client(tracking_uri)
    if ref.isdigit():
        return get_version(tracking_uri, name, ref)
    try:
        if ref:
            return _info(c.get_model_version_by_alias(name, ref))
        aliases = c.get_registered_model(name).aliases
        if "champion" in aliases:
            return get_version(tracking_uri, name, aliases["champion"])
        versions = c.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise RegistryError(f"{spec}: not found in {tracking_uri}") from exc
    if not versions:
        raise RegistryError(f"{spec}: has no versions")
    return get_version(tracking_uri, name, max(int(v.version) for v in versions))


def set_tags(tracking_uri: str, info: VersionInfo, tags: dict[str, str]) -> None:
    c = client(tracking_uri)
    for key, value in tags.items():
        c.set_model_version_tag(info.name, info.version, TAG + key, value)


def set_alias(tracking_uri: str, info: VersionInfo, alias: str) -> None:
    client(tracking_uri).set_registered_model_alias(info.name, alias, info.version)


def set_model_tag(tracking_uri: str, name: str, key: str, value: str) -> None:
    client(tracking_uri).set_registered_model_tag(name, TAG + key, value)


def model_tags(tracking_uri: str, name: str) -> dict[str, str]:
    return dict(client(tracking_uri).get_registered_model(name).tags)


def download(tracking_uri: str, info: VersionInfo, artifact: str, dst: Path) -> Path:
    return Path(client(tracking_uri).download_artifacts(info.run_id, artifact, str(dst)))


def load_lineage(tracking_uri: str, info: VersionInfo) -> LineageRecord:
    """The stored record, checked against the hash tagged at registration, with approvals added."""
    with tempfile.TemporaryDirectory() as tmp:
        data = download(tracking_uri, info, "lineage.json", Path(tmp)).read_bytes()
    if hashlib.sha256(data).hexdigest() != info.tag("lineage_sha256"):
        raise ArtifactMismatch(f"{info.name} v{info.version}: lineage.json differs from the hash tagged at registration")
    record = LineageRecord.from_json_bytes(data)
    approvals = [ApprovalRecord(**a) for a in json.loads(info.tag("approvals", "[]"))]
    return record.model_copy(update={"approvals": approvals})


def check_model_artifact(tracking_uri: str, info: VersionInfo, lineage: LineageRecord) -> None:
    """Download the version's model artifact and re-hash it against the lineage's manifest."""
    with tempfile.TemporaryDirectory() as tmp:
        model = download(tracking_uri, info, "model", Path(tmp))
        where = f"{info.name} v{info.version} model artifact"
        diff_files(lineage.merged.files, file_entries(model), where=where)
        if content_id_of(file_entries(model)) != info.tag("content_id"):
            raise ArtifactMismatch(f"{where}: content id differs from the registered one")


def describe(tracking_uri: str, spec: str) -> tuple[VersionInfo, LineageRecord]:
    """The version named by ``spec`` and its lineage record (what `mergeops lineage` shows)."""
    info = resolve(tracking_uri, spec)
    return info, load_lineage(tracking_uri, info)


def verify_audit_log(tracking_uri: str | None, audit_log_path: Path) -> tuple[int, int]:
    """Check the log's chain and the copies mirrored into MLflow; return ``(entries, anchors)``.

    With ``tracking_uri`` None, or an embedded sqlite store that does not exist yet, only the
    chain is checked.
    """
    anchors = []
    if tracking_uri and not (tracking_uri.startswith("sqlite:///")
                             and not Path(tracking_uri.removeprefix("sqlite:///")).exists()):
        anchors = audit_anchors(tracking_uri, audit_log_path)
    count, _ = AuditLog(audit_log_path).verify(anchors=anchors)
    return count, len(anchors)
