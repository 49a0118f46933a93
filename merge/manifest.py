"""Manifests and content ids: what a model directory *is*, independent of where it lives.

A manifest lists every file of a model directory (relative POSIX path, sha256, size), sorted by
path. The content id is the sha256 of the manifest's canonical JSON (sorted keys, no whitespace),
so two directories with the same bytes have the same id wherever they are stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from merge.errors import UsageError
from merge.hub import is_blob_link

MANIFEST_NAME = "mergeops.manifest.json"
_CHUNK = 8 * 1024 * 1024


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    size: int


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO swapped in must not block
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # /dev/zero would be hashed forever
            raise UsageError(f"{path}: not a regular file (a FIFO, device or socket); remove it")
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(obj: object) -> bytes:
    """The byte form that hashes are taken over: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def model_files(model_dir: Path) -> list[tuple[str, Path]]:
    """``(relative POSIX path, path)`` of every regular file under ``model_dir`` except the manifest
    itself, sorted by path: what a manifest lists.

    Symlinks, FIFOs, devices and sockets are refused: a manifest must describe bytes that live
    inside the directory, and hashing ``/dev/zero`` never ends. The one exception is a Hugging Face
    cache snapshot, whose files are links into its own repo's ``blobs/``; they are hashed as the
    files they point to, so the content id is the one a copy has.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir}: not a directory")
    files = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir).as_posix()
        if path.is_symlink() and not is_blob_link(model_dir, path):
            raise UsageError(f"{model_dir}: {rel} is a symlink; copy the file into the model dir")
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode) or rel == MANIFEST_NAME:
            continue
        if not stat.S_ISREG(mode) and not path.is_symlink():  # blob links were checked to be files
            raise UsageError(f"{model_dir}: {rel} is not a regular file (a FIFO, device or socket); remove it")
        files.append((rel, path))
    return files


def file_entries(model_dir: Path) -> list[FileEntry]:
    """The manifest of ``model_dir``: every file of ``model_files`` with its sha256 and size."""
    return [FileEntry(path=rel, sha256=sha256_file(path), size=path.stat().st_size)
            for rel, path in model_files(model_dir)]


def content_id_of(entries: list[FileEntry]) -> str:
    files = [e.model_dump() for e in sorted(entries, key=lambda e: e.path)]
    return hashlib.sha256(canonical_json(files)).hexdigest()


def content_id(model_dir: Path) -> str:
    """The content id of a model directory (sha256 of its manifest's canonical JSON)."""
    return content_id_of(file_entries(Path(model_dir)))
