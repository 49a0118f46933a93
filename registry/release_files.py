"""What ships beside the merged weights: the model card (README.md), LICENSE and NOTICE.

A merge is a derivative of every parent, so its LICENSE states the effective licence (the AND of
the parents' licences, from the audit) with each parent's licence and link, then each parent's own
licence text where it ships one; NOTICE carries the obligations the audit derived (attribution,
naming, use restrictions) and every parent's own NOTICE, as Apache-2.0 section 4(d) asks.

They are written from the lineage record at registration, so they stay outside the merged content
id (a replay reproduces the weights, not the card); the lineage keeps their sha256s and promote and
verify check them like the weights.
"""

from __future__ import annotations

from pathlib import Path

from merge.manifest import FileEntry, sha256_file
from registry.lineage import LineageRecord
from registry.model_card import render_model_card

RELEASE_NAMES = ("README.md", "LICENSE", "NOTICE")
_LICENSE_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "COPYING")
_NOTICE_FILES = ("NOTICE", "NOTICE.md", "NOTICE.txt")
_MAX_TEXT = 256 * 1024  # a licence is a few pages; more is not a licence file


def _parent_text(parent_dir: str, names: tuple[str, ...]) -> tuple[str, str] | None:
    """(file name, text) of the first of ``names`` in ``parent_dir`` that is a readable text file."""
    for name in names:
        path = Path(parent_dir) / name
        if not path.is_file() or path.stat().st_size > _MAX_TEXT:
            continue
        try:
            return name, path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            continue
    return None


def _license_text(record: LineageRecord, links: dict[str, str]) -> str:
    lines = [f"{record.name}: a merge of {len(record.parents)} models, bound by the licence of every parent.",
             "", f"Effective licence: {record.audit.effective_license or 'unknown'}", "", "Parent licences:"]
    for p in record.parents:
        link = links.get(p.content_id)
        lines.append(f"- {p.reference} (content id {p.content_id[:16]}): {p.license or 'unknown'}"
                     + (f" <{link}>" if link else ""))
    for p in record.parents:
        found = _parent_text(p.path, _LICENSE_FILES)
        if found:
            lines += ["", f"===== {p.reference}: {found[0]} =====", "", found[1]]
    return "\n".join(lines) + "\n"


def _notice_text(record: LineageRecord) -> str:
    lines = [f"{record.name} (content id {record.merged.content_id})",
             f"Merged with `{record.recipe.method or 'unknown'}` from:"]
    lines += [f"- {p.reference} (content id {p.content_id[:16]}, {p.license or 'unknown'})" for p in record.parents]
    lines += ["", "Obligations carried from the parents' licences:"]
    lines += [f"- {o}" for o in record.audit.obligations] or ["- none beyond the licences above"]
    for p in record.parents:
        found = _parent_text(p.path, _NOTICE_FILES)
        if found:
            lines += ["", f"===== {p.reference}: {found[0]} =====", "", found[1]]
    return "\n".join(lines) + "\n"


def write_release_files(record: LineageRecord, out_dir: Path, *, name: str,
                        license_links: dict[str, str] | None = None) -> list[FileEntry]:
    """Write README.md, LICENSE and NOTICE into ``out_dir``; return their entries (path, sha256, size).
    ``license_links``: parent content id -> the licence link its card declares."""
    out_dir = Path(out_dir)
    texts = {"README.md": render_model_card(record, name=name),
             "LICENSE": _license_text(record, license_links or {}),
             "NOTICE": _notice_text(record)}
    entries = []
    for file_name, text in texts.items():
        path = out_dir / file_name
        path.write_text(text, encoding="utf-8")
        entries.append(FileEntry(path=file_name, sha256=sha256_file(path), size=path.stat().st_size))
    return entries
