"""Reading and tagging registered model versions; the MLflow side of approvals, promotion and verify.

``VersionInfo`` is what the rest of registry/ and flows/ see of a model version, so no MLflow
type leaves registry/. Every function takes the tracking URI explicitly.
"""

from __future__ import annotations

import functools

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from merge.manifest import content_id_of, file_entries  # noqa: E402
from registry.errors import ArtifactMismatch, RegistryError, VersionNotFound  # noqa: E402
from registry.lineage import ApprovalRecord, LineageRecord  # noqa: E402
from registry.model_files import diff_files  # noqa: E402
from registry.model_signature import MAX_BUNDLE, check_model_signature, oversized_bundle, read_bundle  # noqa: E402

TAG = "mergeops."  # every tag we write starts with this
SIGNATURE_ARTIFACT = "model_signature/model.sig"  # beside model/, so the content id does not change


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


@functools.lru_cache(maxsize=8)
def client(tracking_uri: str) -> MlflowClient:
    """One client per store and process: opening a sqlite store checks its schema (~0.4 s each)."""
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def experiment_id(c, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created with ``artifact_location`` if it does not exist yet."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by a concurrent writer
        return c.get_experiment_by_name(name).experiment_id


def _info(mv) -> VersionInfo:
    return VersionInfo(name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source,
                       tags=dict(mv.tags), aliases=tuple(getattr(mv, "aliases", ()) or ()))


def get_version(tracking_uri: str, name: str, version: str | int) -> VersionInfo:
    try:
        return _info(client(tracking_uri).get_model_version(name, str(version)))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (exc.error_code == "PERMISSION_DENIED"
                                                           and not _model_exists(tracking_uri, name)):
            raise VersionNotFound(f"{name} v{version}: not found in {tracking_uri}; list versions in the MLflow UI") from exc
        # Anything else (a locked or unreachable store) must not read as "no such version".
        raise RegistryError(f"{name} v{version}: cannot read it from {tracking_uri} ({exc.message})") from exc


def _model_exists(tracking_uri: str, name: str) -> bool:
    """Whether registered model ``name`` exists. An authenticated MLflow server (basic-auth) answers
    a version of a model that does not exist with 403, not 404: it finds no model to take the
    permission from. The model itself answers 404 then."""
    try:
        client(tracking_uri).get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
    return True


def list_versions(tracking_uri: str, name: str) -> list[VersionInfo]:
    """Every version of ``name``, oldest first; empty when the model is not registered."""
    try:
        found = client(tracking_uri).search_model_versions(f"name = '{name}'", max_results=10_000)
    except MlflowException as exc:
        raise RegistryError(f"{name}: cannot list versions in {tracking_uri} ({exc.message})") from exc
    return sorted((_info(mv) for mv in found), key=lambda v: int(v.version))


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


def lineage_bytes(tracking_uri: str, info: VersionInfo) -> bytes:
    """The version's ``lineage.json`` exactly as stored in its run."""
    with tempfile.TemporaryDirectory() as tmp:
        return download(tracking_uri, info, "lineage.json", Path(tmp)).read_bytes()


def load_lineage(tracking_uri: str, info: VersionInfo) -> LineageRecord:
    """The stored record, checked against the hash tagged at registration, with approvals added."""
    data = lineage_bytes(tracking_uri, info)
    if hashlib.sha256(data).hexdigest() != info.tag("lineage_sha256"):
        raise ArtifactMismatch(f"{info.name} v{info.version}: lineage.json differs from the hash tagged at registration")
    record = LineageRecord.from_json_bytes(data)
    approvals = [ApprovalRecord(**a) for a in json.loads(info.tag("approvals", "[]"))]
    return record.model_copy(update={"approvals": approvals})


def check_model_artifact(tracking_uri: str, info: VersionInfo, lineage: LineageRecord, *,
                         public_key: bytes) -> None:
    """Download the version's model artifact, re-hash it against the lineage's manifest, and check
    its model signature with ``public_key`` (the trusted key: tags and lineage can be rewritten by
    whoever can write the store, the signature cannot)."""
    with tempfile.TemporaryDirectory() as tmp:
        model = download(tracking_uri, info, "model", Path(tmp))
        where = f"{info.name} v{info.version} model artifact"
        found = file_entries(model)
        diff_files([*lineage.merged.files, *lineage.release_files], found, where=where)
        release = {e.path for e in lineage.release_files}  # the card, LICENSE, NOTICE: outside the content id
        if content_id_of([e for e in found if e.path not in release]) != info.tag("content_id"):
            raise ArtifactMismatch(f"{where}: content id differs from the registered one")
        check_model_signature(model, _signature_bundle(tracking_uri, info, Path(tmp), where), public_key,
                              where, signer=info.tag("signature_key_id"))


def _signature_bundle(tracking_uri: str, info: VersionInfo, dst: Path, where: str) -> bytes | None:
    """The run's ``model_signature/model.sig`` (None when there is none), read within bounds: its
    listed size is checked before downloading, the bytes read after."""
    folder = SIGNATURE_ARTIFACT.rpartition("/")[0]
    listed = {a.path: a for a in client(tracking_uri).list_artifacts(info.run_id, folder)}
    entry = listed.get(SIGNATURE_ARTIFACT)
    if entry is None or entry.is_dir:
        return None
    if (entry.file_size or 0) > MAX_BUNDLE:
        raise oversized_bundle(where, entry.file_size)  # refused without fetching it
    return read_bundle(download(tracking_uri, info, SIGNATURE_ARTIFACT, dst))


def describe(tracking_uri: str, spec: str) -> tuple[VersionInfo, LineageRecord]:
    """The version named by ``spec`` and its lineage record (what `mergeops lineage` shows)."""
    info = resolve(tracking_uri, spec)
    return info, load_lineage(tracking_uri, info)
