"""What a model directory says about itself: model-card front matter, licence, revision, tools.

Nothing here executes anything from the audited directory, and every file is read within bounds
(``merge.bounded``: regular files, size limits, links kept inside): the card is parsed with
``load_yaml`` (safe_load with an alias-expansion budget), and the git revision is resolved by reading ``.git`` files directly (running
``git`` inside an untrusted checkout can execute its hooks or fsmonitor command).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from merge.bounded import MIB, load_yaml, read_bytes
from merge.errors import UnsafeInput, UsageError
from merge.model_dir import read_model_bytes
from registry.licenses import LicensePolicy, detect_license_text, normalize_license
from registry.schemas import Finding

LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt", "LICENCE.md", "COPYING")
_MAX_TEXT = 4 * MIB  # a card or licence file with its prose: tens of KiB; it is not a weight file
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


class LicenseInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    license: str | None  # normalised id, or None when nothing is declared
    raw: str | None = None  # as written
    source: str | None = None  # "card:license", "card:license_name", "LICENSE", …
    link: str | None = None


def _read_text(path: Path, limit: int = _MAX_TEXT) -> str:
    """A git file's text (regular files only, bounded); undecodable bytes replaced."""
    return read_bytes(path, limit=limit, what="git file").decode("utf-8", errors="replace")


def _model_text(model_dir: Path, name: str) -> str:
    return read_model_bytes(model_dir, name, limit=_MAX_TEXT).decode("utf-8", errors="replace")


def read_card(model_dir: Path, ref: str) -> tuple[dict, list[Finding]]:
    """The README.md front matter (YAML between the first two ``---`` lines) as a dict."""
    path = Path(model_dir) / "README.md"
    if not path.exists() and not path.is_symlink():
        return {}, [Finding(parent=ref, check="card.missing", severity="warning",
                            message="no README.md model card: licence and base_model cannot be read from it")]
    try:
        lines = _model_text(model_dir, "README.md").splitlines()
    except UsageError as exc:  # a FIFO, /dev/zero, a link out, a 1 GB "card": hostile, not sloppy
        return {}, [Finding(parent=ref, check="card.unreadable", severity="error", message=str(exc))]
    if not lines or lines[0].strip() != "---":
        return {}, [Finding(parent=ref, check="card.front-matter", severity="warning",
                            message="README.md has no YAML front matter (--- … ---)")]
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
        doc = load_yaml("\n".join(lines[1:end]), what="README.md front matter") or {}
        if not isinstance(doc, dict):
            raise ValueError("front matter is not a mapping")
    except UnsafeInput as exc:  # an alias bomb or a deep nest is an attack on the auditor
        return {}, [Finding(parent=ref, check="card.unreadable", severity="error",
                            message=f"{exc}; refused (licence and base_model unread)")]
    except (StopIteration, UsageError, ValueError) as exc:
        why = "unterminated front matter" if isinstance(exc, StopIteration) else str(exc).removeprefix(
            "README.md front matter: ").splitlines()[0]
        return {}, [Finding(parent=ref, check="card.front-matter", severity="warning",
                            message=f"README.md front matter cannot be read: {why}")]
    return doc, []


def declared_bases(card: dict) -> list[str]:
    """``base_model`` of a card as a list of names (the field may be a string or a list)."""
    value = card.get("base_model")
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [str(v) for v in values if v]


def resolve_license(model_dir: Path, card: dict, ref: str, policy: LicensePolicy) -> tuple[LicenseInfo, list[Finding]]:
    """The parent's licence: the card's ``license`` (or ``license_name`` when it says ``other``),
    else a LICENSE file recognised by the policy's signatures."""
    model_dir = Path(model_dir)
    findings: list[Finding] = []
    link = card.get("license_link")
    declared = card.get("license")
    if isinstance(declared, list):  # HF allows a list; a merge is bound by each of them
        declared = declared[0] if len(declared) == 1 else " AND ".join(map(str, declared))
    name = card.get("license_name")
    info: LicenseInfo | None = None
    if declared and str(declared).strip().lower() not in ("other", "unknown"):
        info = LicenseInfo(license=normalize_license(str(declared), policy), raw=str(declared), source="card:license")
    elif name:
        info = LicenseInfo(license=normalize_license(str(name), policy), raw=str(name), source="card:license_name")

    files = [model_dir / f for f in LICENSE_FILES if (model_dir / f).is_file()]
    if link and not re.match(r"^[a-z]+://", str(link)) and _local_link(model_dir, str(link)):
        files.insert(0, model_dir / str(link))
    from_file = None
    for path in files:
        try:
            text = _model_text(model_dir, path.relative_to(model_dir).as_posix())
        except UsageError as exc:  # a LICENSE linked out of the dir or to /dev/zero
            findings.append(Finding(parent=ref, check="license.unreadable", severity="error", message=str(exc)))
            continue
        if (detected := detect_license_text(text, policy)) is not None:
            from_file = (detected, path.name)
            break

    if info is None and from_file is not None:
        info = LicenseInfo(license=from_file[0], raw=from_file[1], source=from_file[1])
    elif info is None:
        raw = str(declared) if declared else None
        if raw:  # "other" with no name and no recognisable file: unknown, not missing
            info = LicenseInfo(license=normalize_license(raw, policy), raw=raw, source="card:license")
        elif files:
            info = LicenseInfo(license=f"licenseref-{files[0].name.lower()}", raw=files[0].name, source=files[0].name)
        else:
            info = LicenseInfo(license=None)
    elif from_file is not None and from_file[0] != info.license:
        findings.append(Finding(parent=ref, check="license.mismatch", severity="warning",
                                message=f"model card says {info.license} but {from_file[1]} reads as {from_file[0]}; fix one of them"))
    return info.model_copy(update={"link": str(link) if link else None}), findings


def _git_dir(folder: Path) -> Path | None:
    # Only the model dir's own checkout (a Hub clone): a dir somewhere inside a code repository is
    # usually git-ignored (DVC-tracked), and that repository's HEAD says nothing about its bytes.
    dot = folder / ".git"
    if dot.is_dir():
        return dot
    if dot.is_file():  # a worktree or submodule: "gitdir: <path>"
        try:
            text = _read_text(dot).strip()
        except UsageError:
            return None
        if text.startswith("gitdir:"):
            target = Path(text[len("gitdir:"):].strip())
            return target if target.is_absolute() else (folder / target).resolve()
    return None


def _local_link(model_dir: Path, link: str) -> bool:
    """Whether a card's ``license_link`` names a file inside ``model_dir`` (never ``../``)."""
    parts = Path(link).parts
    return not Path(link).is_absolute() and ".." not in parts and (model_dir / link).is_file()


def git_revision(model_dir: Path) -> str | None:
    """The commit checked out in ``model_dir``'s own git checkout, read from .git files; else None."""
    git = _git_dir(Path(model_dir).resolve())
    if git is None:
        return None
    try:
        head = _read_text(git / "HEAD").strip()
        if _HEX40.match(head):
            return head
        if not head.startswith("ref:"):
            return None
        ref = head[4:].strip()
        common = git
        if (git / "commondir").is_file():
            common = (git / _read_text(git / "commondir").strip()).resolve()
        for base in (git, common):
            if (base / ref).is_file():
                sha = _read_text(base / ref).strip()
                return sha if _HEX40.match(sha) else None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in _read_text(packed, 64 * MIB).splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref and _HEX40.match(parts[0]):
                    return parts[0]
    except (OSError, UsageError):  # a FIFO or huge file in .git: no revision, the content id stands
        return None
    return None


def resolve_revision(model_dir: Path, content_id: str | None) -> tuple[str | None, str]:
    """(revision, kind): a Hub snapshot's commit, else its own git commit, else the content id."""
    model_dir = Path(model_dir).resolve()
    if model_dir.parent.name == "snapshots" and _HEX40.match(model_dir.name):
        return model_dir.name, "hf-snapshot"
    if (sha := git_revision(model_dir)) is not None:
        return sha, "git"
    return content_id, "content-id"


def tool_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for package in ("mergeops", "safetensors", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
