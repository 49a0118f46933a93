"""Where a model reference is read from: a local directory, else the local Hugging Face cache.

A recipe (or ``mergeops audit``) names a parent by directory or by Hub repo id and revision,
``org/name@<revision>`` (``org/name`` alone means the ``main`` ref), the way enterprises mirror
models: into a Hugging Face cache that ``huggingface_hub`` filled where the Hub is reachable and that
is copied to where it is not. The cache layout (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``, read when a reference is resolved, not when huggingface_hub was
imported)::

    models--org--name/refs/<branch or tag>      holds a 40-hex commit
    models--org--name/snapshots/<commit>/...     the files, usually symlinks into ../../blobs/

The layout is read directly, never through the network: a revision is a ref name, a full commit or
an unambiguous commit prefix (which ``snapshot_download(local_files_only=True)`` does not resolve).
A local directory that exists always wins over a repo id of the same spelling.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from merge.bounded import read_text
from merge.errors import SourceNotFound

DEFAULT_REVISION = "main"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_COMMIT_PREFIX = re.compile(r"^[0-9a-f]{7,40}$")  # git's shortest default abbreviation is 7
_REF_LIMIT = 1024  # a ref file holds one 40-hex commit


@dataclass(frozen=True)
class ModelSource:
    """A resolved reference: the directory to read and, for a Hub snapshot, which one it is."""

    reference: str  # as written
    path: Path  # the model directory
    repo_id: str | None = None  # "org/name" when the directory is a Hub cache snapshot
    revision: str | None = None  # as asked for: a branch, a tag or a commit (prefix)
    commit: str | None = None  # the snapshot's full commit


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now (huggingface_hub's own
    constants are fixed when it is first imported)."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        cache = env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]
    else:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        cache = os.path.join(home, "hub")
    return Path(os.path.expandvars(cache)).expanduser()


def snapshot_of(model_dir: Path) -> tuple[str, str] | None:
    """(repo id, commit) when ``model_dir`` is a model snapshot in a Hub cache layout, else None."""
    model_dir = Path(model_dir).absolute()
    repo_dir = model_dir.parent.parent
    if model_dir.parent.name != "snapshots" or not _COMMIT.match(model_dir.name):
        return None
    kind, _, name = repo_dir.name.partition("--")
    if kind != "models" or not name:
        return None
    return name.replace("--", "/"), model_dir.name


def is_blob_link(model_dir: Path, path: Path) -> bool:
    """Whether ``path`` is a symlink from a Hub cache snapshot into its own repo's ``blobs/``
    (how huggingface_hub stores every file): bytes that belong to the model, not outside it."""
    model_dir = Path(model_dir).absolute()
    if not path.is_symlink() or snapshot_of(model_dir) is None:
        return False
    blobs = (model_dir.parent.parent / "blobs").resolve()
    return path.resolve().is_relative_to(blobs) and path.resolve().is_file()


def _is_repo_id(text: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def resolve_model(reference: str, base_dir: Path | None = None) -> ModelSource:
    """The directory ``reference`` names: an existing directory (relative ones against
    ``base_dir``), else a snapshot in the local Hugging Face cache. Raises SourceNotFound, one line
    naming the reference, where it looked and what to do; never reaches the network."""
    ref = str(reference)
    if not ref.strip():  # Path("") is the working directory: an empty argument is a mistake
        raise SourceNotFound("empty model reference: give a model directory or ORG/NAME[@REVISION]")
    local = Path(ref).expanduser()
    if not local.is_absolute() and base_dir is not None:
        local = Path(base_dir) / local
    if local.is_dir():
        repo_id, commit = snapshot_of(local) or (None, None)
        return ModelSource(ref, local, repo_id, commit=commit)
    repo_id, at, revision = ref.partition("@")
    revision = revision if at else DEFAULT_REVISION
    if ref.startswith(("/", ".", "~")) or not _is_repo_id(repo_id) or not revision:
        raise SourceNotFound(f"{ref}: model directory not found ({local.absolute()})")
    cache = hub_cache_dir()
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    hint = (f"mirror it into the cache (e.g. `hf download {repo_id} --revision {revision}` where the Hub "
            f"is reachable, then copy the cache here, or set HF_HUB_CACHE) or give a local model directory")
    if not repo_dir.is_dir():
        raise SourceNotFound(f"{ref}: model not found: no directory {local}, and no {repo_id} in the "
                             f"Hugging Face cache {cache}; {hint}")
    commits = _commits(repo_dir, revision)
    if len(commits) > 1:
        raise SourceNotFound(f"{ref}: commit prefix {revision!r} matches {len(commits)} snapshots of {repo_id} "
                             f"({', '.join(c[:12] for c in commits)}); give more of the commit")
    if not commits:
        known = sorted(p.relative_to(repo_dir / "refs").as_posix()
                       for p in (repo_dir / "refs").rglob("*") if p.is_file())
        raise SourceNotFound(f"{ref}: model not found: the Hugging Face cache {cache} has {repo_id} but no "
                             f"revision {revision!r} (refs: {', '.join(known) or 'none'}); {hint}")
    commit = commits[0]
    snapshot = repo_dir / "snapshots" / commit
    if not snapshot.is_dir():
        raise SourceNotFound(f"{ref}: model not found: {revision!r} is commit {commit} but {snapshot} is missing "
                             f"(a partial mirror); {hint}")
    return ModelSource(ref, snapshot, repo_id, revision, commit)


def _commits(repo_dir: Path, revision: str) -> list[str]:
    """The full commits ``revision`` may mean: a ref file's, a full commit, or the snapshots a
    commit prefix matches (more than one: ambiguous)."""
    ref_file = repo_dir / "refs" / revision
    if ".." not in Path(revision).parts and (ref_file.is_file() or ref_file.is_symlink()):
        # Bounded: a ref linked to /dev/zero, a FIFO or a huge file is one error line, not a hang.
        commit = read_text(ref_file, limit=_REF_LIMIT, what="Hugging Face cache ref").strip()
        return [commit] if _COMMIT.match(commit) else []
    if not _COMMIT_PREFIX.match(revision) or not (repo_dir / "snapshots").is_dir():
        return []
    return sorted(p.name for p in (repo_dir / "snapshots").iterdir()
                  if _COMMIT.match(p.name) and p.name.startswith(revision))


def display_name(model_dir: Path) -> str:
    """A short name for a model directory: a snapshot's repo id, else the directory's name."""
    hub = snapshot_of(Path(model_dir))
    return hub[0] if hub else Path(model_dir).name
