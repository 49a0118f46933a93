"""Bit-for-bit verification: re-run a registered merge from its lineage and compare content ids.

First the registered model artifact is downloaded, re-hashed against the lineage's manifest and
its model signature checked with the trusted public key.
The parents are identified by content id, not by path: before merging, each parent is re-hashed
where it is now (a Hugging Face parent at its recorded commit in this machine's Hub cache, any
other at its recorded path), a parent whose bytes changed is named and refused (the merge would
otherwise "verify" against different inputs), and the re-merge reads exactly those directories.
The recipe is the lineage's full text, parsed against its recorded base dir, with the recorded
seed. Every outcome writes a ``verified`` audit-log entry.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from merge.errors import SourceNotFound
from merge.hub import resolve_model
from merge.manifest import content_id, file_entries
from registry import mlflow_registry as reg
from registry.errors import ArtifactMismatch, VerifyMismatch
from registry.lineage import code_version


@dataclass(frozen=True)
class VerifyResult:
    name: str
    version: str
    content_id: str
    files: int


def _parent_dir(parent) -> Path:
    """Where a recorded parent is now: a Hub parent at its recorded commit in this machine's Hugging
    Face cache (the branch may have moved on, the cache may live elsewhere), else its recorded path."""
    if parent.repo_id and parent.commit:
        try:
            return resolve_model(f"{parent.repo_id}@{parent.commit}").path
        except SourceNotFound as exc:
            raise VerifyMismatch(f"parent {parent.reference}: {exc}") from None
    path = Path(parent.path)
    if not path.is_dir():
        raise VerifyMismatch(f"parent {parent.reference}: {path} is gone; restore it (e.g. `dvc pull`) to verify")
    return path


def _check_parents(lineage) -> dict[str, Path]:
    """Re-hash every parent where it is now; {reference: dir} for the re-merge."""
    dirs = {}
    for parent in lineage.parents:
        path = _parent_dir(parent)
        now = content_id(path)
        if now != parent.content_id:
            raise VerifyMismatch(f"parent {parent.reference}: content id is now {now[:16]}, lineage recorded "
                                 f"{parent.content_id[:16]}; the parent changed since registration")
        dirs[parent.reference] = path
    return dirs


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


def _remerge(lineage, work: Path, parents: dict[str, Path]):
    # Imported here: the merge engine is heavy (torch) and only verify needs it.
    from merge.recipe import parse_recipe
    from merge.run import run_merge

    recipe = parse_recipe(lineage.recipe.text, Path(lineage.recipe.base_dir))
    # Each reference reads the bytes just re-hashed (a Hub ref at its recorded commit, not today's).
    recipe = recipe.model_copy(update={"locked": {r: p for r, p in parents.items() if r in recipe.model_refs()}})
    if lineage.seed is not None and getattr(recipe, "seed", lineage.seed) != lineage.seed:
        recipe = recipe.model_copy(update={"seed": lineage.seed})
    return run_merge(recipe, work / "merged", progress=False)


def verify_version(tracking_uri: str, spec: str, *, audit_log_path: Path, public_key: bytes,
                   work_dir: Path | None = None) -> VerifyResult:
    """Re-create ``NAME@VERSION`` from its lineage; raise VerifyMismatch naming what differs.
    ``public_key`` (PEM) is the trusted key the model's signature is checked with."""
    info = reg.resolve(tracking_uri, spec)
    lineage = reg.load_lineage(tracking_uri, info)
    try:
        try:  # the registered bytes must still be the ones the lineage describes
            reg.check_model_artifact(tracking_uri, info, lineage, public_key=public_key)
        except ArtifactMismatch as exc:
            raise VerifyMismatch(str(exc)) from exc
        parents = _check_parents(lineage)
        with tempfile.TemporaryDirectory(dir=work_dir, prefix="mergeops-verify-") as tmp:
            result = _remerge(lineage, Path(tmp), parents)
            out = Path(result.out_dir)
            if result.content_id != lineage.merged.content_id:
                hint = _code_hint(lineage)
                try:
                    reg.diff_files(lineage.merged.files, file_entries(out), where="the re-merged model")
                except ArtifactMismatch as exc:
                    raise VerifyMismatch(f"{info.name} v{info.version}: not reproduced; {exc}{hint}") from exc
                raise VerifyMismatch(f"{info.name} v{info.version}: content id {result.content_id[:16]} "
                                     f"differs from {lineage.merged.content_id[:16]}{hint}")
            files = len(file_entries(out))
    except VerifyMismatch as exc:
        reg.record_event(tracking_uri, info.name, info.version, audit_log_path, "verified",
                         outcome="mismatch", reason=str(exc))
        reg.set_tags(tracking_uri, info, {"verify": "mismatch"})
        raise
    reg.record_event(tracking_uri, info.name, info.version, audit_log_path, "verified",
                     outcome="reproduced", content_id=lineage.merged.content_id)
    reg.set_tags(tracking_uri, info, {"verify": "reproduced"})
    return VerifyResult(info.name, info.version, lineage.merged.content_id, files)
