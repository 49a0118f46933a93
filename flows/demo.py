"""Demo helpers: publish a new revision of a parent, in place, as an upstream team would.

``python -m flows.demo update-parent data/zoo/models/sort`` nudges one tensor by 1e-6 (a re-save
after a tiny further fine-tune: scores do not move) and records the revision in the model card, so
the parent's content id changes and ``mergeops watch --once`` has a real change to find.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from flows.settings import get_settings
from merge.manifest import content_id


def update_parent(model_dir: Path) -> tuple[str, str]:
    """Re-save ``model_dir`` with a tiny change; return (old content id, new content id)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    before = content_id(model_dir)
    weights = model_dir / "model.safetensors"
    with safe_open(weights, "pt") as fh:
        metadata = fh.metadata() or {}
        tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    name = next(n for n in sorted(tensors) if tensors[n].is_floating_point())
    tensors[name] = tensors[name] + torch.full_like(tensors[name], 1e-6)
    tmp = weights.with_suffix(".tmp")
    save_file(tensors, tmp, metadata=metadata)
    tmp.replace(weights)
    card = model_dir / "README.md"
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    with open(card, "a") as fh:
        fh.write(f"\n\nRevision {stamp}: re-saved after a short further fine-tune of `{name}`.\n")
    return before, content_id(model_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "update-parent":
        print("usage: python -m flows.demo update-parent MODEL_DIR", file=sys.stderr)
        return 2
    before, after = update_parent(Path(argv[1]))
    print(f"{argv[1]}: content id {before[:12]} -> {after[:12]}")
    if get_settings().prefect_server:  # a served `mergeops watch` reacts to the event
        from flows.watch import emit_parent_updated

        emit_parent_updated(Path(argv[1]))
        print("emitted mergeops.parent.updated")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
