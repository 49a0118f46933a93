"""A model directory against its manifest: which files changed, went missing or appeared."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import ValidationError

from merge.errors import UsageError
from merge.manifest import MANIFEST_NAME, FileEntry, content_id_of, file_entries
from merge.model_dir import read_model_json
from registry.errors import ArtifactMismatch, RegistryError
from registry.release_files import RELEASE_NAMES


def check_model_dir(model_dir: Path) -> dict:
    """Re-hash ``model_dir`` against its ``mergeops.manifest.json``; return the manifest."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.exists() and not path.is_symlink():
        raise RegistryError(f"{model_dir}: no {MANIFEST_NAME}; register only directories written by `mergeops merge`")
    try:  # bounded: a regular file inside the dir, at most 32 MiB, JSON of bounded depth
        manifest = read_model_json(Path(model_dir), MANIFEST_NAME)
        files = [FileEntry.model_validate(f) for f in manifest["files"]]
        expected_id = manifest["content_id"]
    except UsageError as exc:
        raise ArtifactMismatch(f"{exc}; re-merge it") from None
    except (TypeError, KeyError, ValidationError):
        raise ArtifactMismatch(f"{path}: not a mergeops manifest (a \"files\" list and a \"content_id\"); "
                               "re-merge it") from None
    actual = file_entries(Path(model_dir))
    diff_files(files, actual, where=str(model_dir))
    if content_id_of(actual) != expected_id:
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



def stage_release(model_dir: Path, files: list[str], stage: Path) -> Path:
    """``stage`` holding ``files`` of ``model_dir`` and its manifest, as hard links where the file
    system allows (else copies), ready for the release files beside them. Refuses a model dir that
    already holds a file the registry writes itself."""
    clash = [n for n in RELEASE_NAMES if n in files]
    if clash:
        raise RegistryError(f"{model_dir}: already holds {', '.join(clash)}; the registry writes these from the "
                            "lineage, so a merged model dir must not carry them")
    for rel in [*files, MANIFEST_NAME]:
        src, dst = Path(model_dir) / rel, stage / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return stage
