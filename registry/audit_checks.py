"""Per-parent checks that read headers and file names only: format safety and integrity.

Pickle checkpoints are recognised by name and by their bytes (``merge.pickle_scan``), and are never opened by a
deserialiser: unpickling runs arbitrary code. Every ``*.safetensors`` file is header-validated
(``merge.safetensors_header.read_header``) before anything else touches it.
"""

from __future__ import annotations

import re
from pathlib import Path

from merge.errors import FormatError, MergeopsError, UsageError
from merge.layout import PICKLE_SUFFIXES, ModelLayout, read_layout
from merge.manifest import MANIFEST_NAME, FileEntry, content_id_of
from merge.model_dir import read_model_json
from merge.pickle_scan import pickle_files
from merge.safetensors_header import read_header
from registry.schemas import Finding

CONVERT_HINT = (
    "convert it to safetensors in an isolated, throw-away environment (for example "
    "AutoModel.from_pretrained(dir).save_pretrained(out, safe_serialization=True)) and audit the result"
)
_HEX = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


def _pickles(model_dir: Path) -> tuple[set[str], set[str]]:
    """(named by suffix, recognised by content): relative paths, subfolders included (a Hub repo's
    ``original/consolidated.00.pth`` is part of the audited bytes even though no merge reads it).
    Every file is sniffed whatever its name (``merge.pickle_scan``); a suffix alone also counts."""
    sniffed = set(pickle_files(model_dir))
    named = set()
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if ".git" not in rel.parts and path.suffix.lower() in PICKLE_SUFFIXES and rel.as_posix() not in sniffed:
            named.add(rel.as_posix())
    return named, sniffed


def check_format(model_dir: Path, ref: str) -> tuple[ModelLayout | None, list[Finding]]:
    """Pickle files refused by name or content; every safetensors header validated; the layout."""
    model_dir = Path(model_dir)
    findings: list[Finding] = []
    named, sniffed = _pickles(model_dir)
    for name in sorted(named | sniffed):
        how = "by its content" if name in sniffed else f"by its suffix ({', '.join(PICKLE_SUFFIXES)})"
        findings.append(Finding(
            parent=ref, check="format.pickle", severity="error",
            message=f"{name} is a pickle checkpoint (recognised {how}; loading it can run code): refused "
                    f"without opening it; {CONVERT_HINT}, then remove {name}",
        ))

    layout = None
    try:
        layout = read_layout(model_dir)
    except MergeopsError as exc:
        # "only pickle checkpoints" is already said, file by file, above.
        if not (named | sniffed and "pickle" in str(exc)):
            check = "format.header" if isinstance(exc, FormatError) else "format.layout"
            findings.append(Finding(parent=ref, check=check, severity="error", message=str(exc)))
    code = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*.py") if ".git" not in p.parts)
    auto_map = layout is not None and "auto_map" in layout.config
    if code or auto_map:
        what = ", ".join(code[:3]) + (" and config.json auto_map" if auto_map else "") if code else "config.json auto_map"
        findings.append(Finding(parent=ref, check="format.remote-code", severity="warning",
                                message=f"ships custom model code ({what}): the merge reads tensors only, but never "
                                        "load this model or the merged one with trust_remote_code=True unreviewed"))
    if layout is not None and not layout.tensors:
        findings.append(Finding(parent=ref, check="format.layout", severity="error",
                                message="the safetensors files hold no tensors; point at a directory with the weights"))
        layout = None
    # Shards outside the index are never merged, but a crafted one must not slip by unvalidated.
    indexed = set(layout.shards) if layout else set()
    said = {f.message for f in findings}
    for path in sorted(model_dir.glob("*.safetensors")):
        if path.name in indexed:
            continue
        try:
            read_header(path)
        except MergeopsError as exc:
            if str(exc) not in said:
                findings.append(Finding(parent=ref, check="format.header", severity="error", message=str(exc)))
            continue
        if layout is not None:
            findings.append(Finding(parent=ref, check="format.stray-shard", severity="warning",
                                    message=f"{path.name} is not in the shard index and will not be merged; remove it"))
    return layout, findings


def check_integrity(
    model_dir: Path, ref: str, entries: list[FileEntry], content_id: str,
    revision: str | None, pin: str | None,
) -> list[Finding]:
    """A pinned content id or revision must match; a manifest shipped in the dir must be true."""
    findings: list[Finding] = []
    if pin is not None and pin not in (content_id, revision):
        what = "revision" if len(pin) == 40 else "content id"
        findings.append(Finding(
            parent=ref, check="integrity.pin", severity="error",
            message=f"pinned {what} {pin[:12]}… but the directory's content id is {content_id[:12]}…"
                    f"{f' (revision {revision[:12]}…)' if revision and revision != content_id else ''}: refused; "
                    "the parent changed since it was pinned — re-audit it and update the pin on purpose",
        ))
    manifest = Path(model_dir) / MANIFEST_NAME
    if manifest.exists() or manifest.is_symlink():
        try:
            doc = read_model_json(model_dir, MANIFEST_NAME)
            recorded = [FileEntry(**f) for f in doc["files"]]
        except (UsageError, ValueError, KeyError, TypeError) as exc:
            return findings + [Finding(parent=ref, check="integrity.manifest", severity="error",
                                       message=f"{MANIFEST_NAME} is malformed ({exc}); regenerate it")]
        if content_id_of(recorded) != content_id or doc.get("content_id", content_id) != content_id:
            now = {e.path: e.sha256 for e in entries}
            then = {e.path: e.sha256 for e in recorded}
            changed = sorted(p for p in now.keys() | then.keys() if now.get(p) != then.get(p))
            findings.append(Finding(
                parent=ref, check="integrity.manifest", severity="error",
                message=f"files differ from {MANIFEST_NAME} (first: {changed[0] if changed else 'content_id'}): "
                        "the model was modified after it was written; restore it or rebuild it",
            ))
    return findings


def validate_pin(ref: str, pin: object) -> str:
    """A pin is a 64-hex content id or a 40-hex git/Hub revision."""
    if not isinstance(pin, str) or not _HEX.match(pin):
        raise UsageError(f"pin for {ref!r} must be a 64-hex content id or a 40-hex revision, got {pin!r}")
    return pin
