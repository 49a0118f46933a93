"""Which of the given model directories is the merged model, and which are its parents.

Rules, in order (what ``mergeops evaluate`` documents):
1. ``merged`` given explicitly: it is the merged model; the other directories are its parents.
2. Otherwise a directory holding ``mergeops.manifest.json`` (written by ``mergeops merge``) is the
   merged model; more than one such directory is ambiguous.
3. Otherwise a single directory is evaluated alone as the candidate (role ``merged``, no parents);
   several plain directories need ``merged`` to say which one is the candidate.
When the merged model has a manifest and no parent is given, its manifest's parents are evaluated,
after checking that their bytes still match the content ids recorded at merge time.
"""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.run import ModelRef
from merge.errors import UsageError
from merge.manifest import MANIFEST_NAME, content_id


def _manifest_parents(merged: Path) -> list[Path]:
    try:
        doc = json.loads((merged / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{merged / MANIFEST_NAME}: unreadable ({exc}); pass the parents explicitly") from None
    out = []
    for parent in doc.get("parents", []):
        raw = Path(parent["path"])
        path = next((p for p in (raw, merged / raw, merged.parent / raw) if p.is_dir()), None)
        if path is None:
            raise UsageError(f"{merged}: parent {raw} from its manifest not found; pass the parents explicitly")
        want = parent.get("content_id")
        if want and content_id(path) != want:
            raise UsageError(f"{merged}: parent {path} changed since the merge (content id no longer "
                             f"{want[:12]}); re-merge, or pass the parents explicitly")
        out.append(path)
    return out


def resolve_models(model_dirs: list[Path], merged: Path | None = None) -> list[ModelRef]:
    """ModelRefs (merged first, then parents in the order given) per the rules above."""
    dirs = [Path(d) for d in model_dirs]
    for d in dirs + ([Path(merged)] if merged else []):
        if not d.is_dir():
            raise UsageError(f"{d}: model directory not found")
    if merged is None:
        with_manifest = [d for d in dirs if (d / MANIFEST_NAME).is_file()]
        if len(with_manifest) > 1:
            raise UsageError(f"several merged models ({', '.join(map(str, with_manifest))}); say which one "
                             "to evaluate with --merged DIR")
        if with_manifest:
            merged = with_manifest[0]
        elif len(dirs) == 1:
            merged = dirs[0]
        else:
            raise UsageError("which directory is the merged model? Pass it with --merged DIR (the others are "
                             "its parents)")
    merged = Path(merged)
    parents = [d for d in dirs if d.resolve() != merged.resolve()]
    if not parents and (merged / MANIFEST_NAME).is_file():
        parents = _manifest_parents(merged)
    return [ModelRef(path=merged, role="merged")] + [ModelRef(path=p, role="parent") for p in parents]
