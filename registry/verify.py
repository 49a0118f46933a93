"""Bit-for-bit verification: re-run a registered merge from its lineage and compare content ids.

First the registered model artifact is downloaded and re-hashed against the lineage's manifest.
The parents are identified by content id, not by path. Each is looked for, in order, where the
lineage recorded it, then (a Hugging Face parent) at its recorded commit in this machine's Hub
cache, then in the artifact store: ``restore`` (flows passes the DVC store's) copies the bytes
versioned under that content id into a temporary directory, which is re-hashed like any other
copy. The first copy whose content id is the recorded one is used; the re-merge reads exactly
those directories, and the restored copies are removed afterwards, on failure and Ctrl-C too.
A parent with no such copy anywhere is named, with what is missing and how to restore it.
The recipe is the lineage's full text, parsed against its recorded base dir, with the recorded
seed. Every outcome writes a ``verified`` audit-log entry.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from merge.errors import SourceNotFound
from merge.hub import resolve_model
from merge.manifest import content_id, file_entries, sha256_file
from registry import mlflow_registry as reg
from registry.errors import ArtifactMismatch, ParentUnavailable, VerifyMismatch
from registry.lineage import code_version

RestoreParent = Callable[[str, Path], None]
"""``restore(content_id, dest)``: write the bytes an artifact store versions under ``content_id``
into the new directory ``dest``; raise ParentUnavailable saying what is missing and how to restore
it when the store cannot."""


@dataclass(frozen=True)
class VerifyResult:
    name: str
    version: str
    content_id: str
    files: int
    restored: dict[str, str]  # {parent reference: content id} of the parents restored from the store
    restored_statistics: dict[str, str] = field(default_factory=dict)  # {path: sha256}, statistics files restored


def _local_copies(parent) -> list[tuple[Path | None, str]]:
    """Where a parent may still be on this machine: (directory, what to say when it is not there)."""
    path = Path(parent.path)
    copies: list[tuple[Path | None, str]] = [(path, f"{path} is gone")]
    if parent.repo_id and parent.commit:
        # The branch may have moved on, and the cache may live elsewhere than at registration.
        try:
            hub = resolve_model(f"{parent.repo_id}@{parent.commit}").path
        except SourceNotFound:
            copies.append((None, f"{parent.repo_id}@{parent.commit[:12]} is not in this machine's Hugging Face cache"))
        else:
            if hub.resolve() != path.resolve():
                copies.append((hub, f"{hub} is gone"))
    return copies


def _find_parent(parent, restore: RestoreParent | None, work: Path) -> tuple[Path, bool]:
    """A directory holding exactly the parent's recorded bytes, and whether it came from the store."""
    misses = []
    for path, gone in _local_copies(parent):
        if path is None or not path.is_dir():
            misses.append(gone)
            continue
        now = content_id(path)
        if now == parent.content_id:
            return path, False
        misses.append(f"{path} now holds content {now[:16]}")
    where = f"parent {parent.reference} (content {parent.content_id[:16]})"
    back = (f"download {parent.repo_id}@{parent.commit} into the Hugging Face cache" if parent.repo_id and parent.commit
            else f"put its recorded bytes back at {parent.path}")
    dest = _from_store(restore, parent.content_id, work / "parents" / parent.content_id, content_id,
                       where, "; ".join(misses), back, "content id")
    return dest, True


def _from_store(restore: RestoreParent | None, key: str, dest: Path, digest: Callable[[Path], str], where: str,
                missing: str, back: str, what: str) -> Path:
    """``restore(key, dest)``, the copy refused unless ``digest(dest)`` is ``key``; VerifyMismatch
    ``where: missing; ...`` saying how to get the bytes back (``back``) when there is no copy."""
    if restore is None:
        raise VerifyMismatch(f"{where}: {missing}; {back} to verify")
    dest.parent.mkdir(exist_ok=True)
    try:
        restore(key, dest)
    except ParentUnavailable as exc:
        raise VerifyMismatch(f"{where}: {missing}; {exc}; or {back}") from None
    got = digest(dest)
    if got != key:
        raise VerifyMismatch(f"{where}: the copy restored from the store hashes to {got[:16]}, not the "
                             f"recorded {what}; refusing it (the store's copy is damaged)")
    return dest


def _code_hint(lineage) -> str:
    """Name a code difference, the usual reason an unchanged recipe and parents give other bytes."""
    then, now = lineage.code, code_version()
    if (then.git_sha, then.git_dirty, then.packages) == (now.git_sha, now.git_dirty, now.packages):
        return ""
    def label(c):
        return f"git {(c.git_sha or 'unknown')[:12]}{' (dirty)' if c.git_dirty else ''}"
    changed = sorted(k for k in then.packages.keys() | now.packages.keys()
                     if then.packages.get(k) != now.packages.get(k))
    return (f" (registered with {label(then)}, verifying with {label(now)}"
            + (f"; packages changed: {', '.join(changed)}" if changed else "") + ")")


def _remerge(lineage, work: Path, parents: dict[str, Path], statistics: dict[str, Path] | None = None):
    # Imported here: the merge engine is heavy (torch) and only verify needs it.
    from merge.recipe import parse_recipe
    from merge.run import run_merge

    recipe = parse_recipe(lineage.recipe.text, Path(lineage.recipe.base_dir))
    # Each reference reads the bytes just re-hashed (a Hub ref at its recorded commit, not today's;
    # a parent changed in place from its restored copy).
    statistics = statistics or {}
    locked = {r: p for r, p in parents.items() if r in recipe.model_refs()}
    # Each statistics setting reads the file holding its recorded bytes (restored from the store).
    locked |= {v: statistics[str(path.resolve())] for v, path in recipe.statistics_refs()
               if str(path.resolve()) in statistics}
    recipe = recipe.model_copy(update={"locked": locked})
    if lineage.seed is not None and getattr(recipe, "seed", lineage.seed) != lineage.seed:
        recipe = recipe.model_copy(update={"seed": lineage.seed})
    return run_merge(recipe, work / "merged", progress=False)


def _find_statistics(info, lineage, restore: RestoreParent | None, work: Path) -> dict[str, Path]:
    """{recorded path: a file holding its recorded bytes} for the statistics files the merge solved
    with: the file where it was when unchanged, else a copy the store versions under its sha256;
    one that is nowhere is named (a changed one would re-merge to other weights)."""
    found = {}
    for stat in lineage.statistics:
        path = Path(stat.path)
        now = sha256_file(path) if path.is_file() else None
        if now == stat.sha256:
            found[stat.path] = path
            continue
        missing = "it is gone" if now is None else f"it now hashes to {now[:16]}, not the recorded {stat.sha256[:16]}"
        found[stat.path] = _from_store(restore, stat.sha256, work / "statistics" / stat.sha256, sha256_file,
                                       f"{info.name} v{info.version}: statistics file {path}", missing,
                                       "put the recorded file back", "sha256")
    return found


def _reproduce(info, lineage, work: Path, restore: RestoreParent | None,
               restore_statistics: RestoreParent | None = None) -> tuple[int, dict[str, str], dict[str, str]]:
    """Find the parents and statistics files, re-merge in ``work``; (files, {reference: content id}
    of the parents restored, {path: sha256} of the statistics files restored) or VerifyMismatch."""
    parents, restored = {}, {}
    for parent in lineage.parents:
        parents[parent.reference], from_store = _find_parent(parent, restore, work)
        if from_store:
            restored[parent.reference] = parent.content_id
    statistics = _find_statistics(info, lineage, restore_statistics, work)
    restored_statistics = {s.path: s.sha256 for s in lineage.statistics if statistics[s.path] != Path(s.path)}
    result = _remerge(lineage, work, parents, statistics)
    out = Path(result.out_dir)
    if result.content_id != lineage.merged.content_id:
        hint = _code_hint(lineage)
        try:
            reg.diff_files(lineage.merged.files, file_entries(out), where="the re-merged model")
        except ArtifactMismatch as exc:
            raise VerifyMismatch(f"{info.name} v{info.version}: not reproduced; {exc}{hint}") from exc
        raise VerifyMismatch(f"{info.name} v{info.version}: content id {result.content_id[:16]} "
                             f"differs from {lineage.merged.content_id[:16]}{hint}")
    return len(file_entries(out)), restored, restored_statistics


Recorder = Callable[[reg.VersionInfo, dict], None]


def _recorder(tracking_uri: str, audit_log_path: Path) -> Recorder:
    def record(info: reg.VersionInfo, data: dict) -> None:
        reg.record_event(tracking_uri, info.name, info.version, audit_log_path, "verified", **data)
        reg.set_tags(tracking_uri, info, {"verify": data["outcome"]})
    return record


def verify_version(tracking_uri: str, spec: str, *, audit_log_path: Path, public_key: bytes,
                   work_dir: Path | None = None, restore: RestoreParent | None = None,
                   record: Recorder | None = None, restore_statistics: RestoreParent | None = None) -> VerifyResult:
    """Re-create ``NAME@VERSION`` from its lineage; raise VerifyMismatch naming what differs.

    ``public_key`` (PEM) is the trusted key the model's signature is checked with. ``restore``
    fetches a parent that moved on from the artifact store by its content id (None: only the copies
    on this machine count). Restored parents and the re-merge live in a temporary directory under
    ``work_dir`` (the system's by default), removed whatever happens. ``record(info, data)`` writes
    the ``verified`` outcome (default: this store's audit log and the version's ``verify`` tag; with
    a governance service, the service does both). ``restore_statistics(sha256, dest)`` fetches a
    calibration statistics file that changed or is gone from the store by its sha256 (None: only the
    file where it was counts).
    """
    record = record or _recorder(tracking_uri, audit_log_path)
    info = reg.resolve(tracking_uri, spec)
    lineage = reg.load_lineage(tracking_uri, info)
    try:
        try:  # the registered bytes must still be the ones the lineage describes
            reg.check_model_artifact(tracking_uri, info, lineage, public_key=public_key)
        except ArtifactMismatch as exc:
            raise VerifyMismatch(str(exc)) from exc
        with tempfile.TemporaryDirectory(dir=work_dir, prefix="mergeops-verify-") as tmp:
            files, restored, restored_statistics = _reproduce(info, lineage, Path(tmp), restore, restore_statistics)
    except VerifyMismatch as exc:
        record(info, {"outcome": "mismatch", "reason": str(exc)})
        raise
    record(info, {"outcome": "reproduced", "content_id": lineage.merged.content_id,
                  **({"restored_from_store": sorted(restored)} if restored else {}),
                  **({"statistics_restored_from_store": sorted(restored_statistics)} if restored_statistics else {})})
    return VerifyResult(info.name, info.version, lineage.merged.content_id, files, restored, restored_statistics)
