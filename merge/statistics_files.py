"""The calibration statistics files a merge plan reads (fisher / regmean): inputs like its parents.

Each file is hashed through the descriptor its tensors are then read from (``fd``, shared with the
tensor reads), so the recorded sha256 is of the bytes merged; a file written to while the merge
reads it fails the merge. Files written by ``mergeops calibrate`` name the model they were computed
from (``mergeops.model_content_id``), which must be the parent they are given for; sequential
statistics also name every parent they were computed with (``mergeops.merged_with``), which must all
be parents of the merge.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from merge.errors import MergeFailed, StaleStatistics
from merge.safetensors_header import read_header

_CHUNK = 8 * 1024 * 1024


class StatisticsFiles:
    def __init__(self, plan, fd: Callable[[Path], int]):
        """``fd(path)``: the descriptor the merge reads that file's tensors from."""
        self._plan, self._fd = plan, fd
        self._users: dict[str, set[int]] = {}  # path -> the parents whose statistics it holds
        for tp in plan.tensors:
            for (parent, _), params in zip(tp.inputs, tp.per_input):
                if "statistics" in params:
                    self._users.setdefault(str(plan.recipe.path_of(params["statistics"])), set()).add(parent)
        self._seen: dict[str, tuple[str, int, tuple]] = {}  # path -> (sha256, size, fstat at hashing)

    def hash(self) -> None:
        """Hash every statistics file the plan reads (a file swapped in under its path afterwards is never read)."""
        for path in sorted(self._users):
            fd = self._fd(Path(path))
            digest, size = hashlib.sha256(), 0
            while chunk := os.pread(fd, _CHUNK, size):
                digest.update(chunk)
                size += len(chunk)
            self._seen[path] = (digest.hexdigest(), size, _signature(fd))

    def check_models(self, parent_ids: list[str]) -> None:
        """Statistics of another model, or of the parent before it changed, are refused and nothing
        is placed (RegMean's and Fisher's statistics describe their own parent; shared ones reduce
        either to a plain average). Statistics without calibrate's record (other tools') are taken
        as they are."""
        present = set(parent_ids)
        for path, parents in sorted(self._users.items()):
            metadata = read_header(Path(path)).metadata
            made_from = metadata.get("mergeops.model_content_id")
            merged_with = [c for c in metadata.get("mergeops.merged_with", "").split(",") if c]
            missing = [c for c in merged_with if c not in present]
            if missing:  # sequential statistics describe the merge of one set of parents
                raise StaleStatistics(
                    f"{path}: sequential statistics computed with parent content {missing[0][:16]}, which this "
                    "merge does not have (another model, or changed since); run `mergeops calibrate --kind "
                    "sequential` on this recipe again")
            for parent in sorted(parents):
                if made_from is not None and made_from != parent_ids[parent]:
                    raise StaleStatistics(
                        f"{path}: statistics computed from content {made_from[:16]}, but {self._plan.refs[parent]} "
                        f"holds content {parent_ids[parent][:16]} (another model, or changed since); run "
                        "`mergeops calibrate` on it again")

    def record(self) -> list[dict]:
        """``[{"path", "sha256", "size"}]`` of the files hashed, by path; MergeFailed when one was
        written to while the merge read it."""
        out = []
        for path, (sha, size, sig) in sorted(self._seen.items()):
            if _signature(self._fd(Path(path))) != sig:
                raise MergeFailed(f"{path}: statistics file changed while the merge read it; run the merge again")
            out.append({"path": str(Path(path).resolve()), "sha256": sha, "size": size})
        return out


def _signature(fd: int) -> tuple:
    st = os.fstat(fd)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
