"""The output directory of a merge: checked before any weight is read, written beside it in a temp
dir, renamed into place only when complete.

``--out`` must be a plain path: not a symbolic link (to a directory or dangling; renaming onto
one fails only after the whole merge, and following it would write somewhere the user did not
name), not a file, empty if it exists, and inside a directory we may write in.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import torch

from merge.errors import UsageError

_FINITE_CHUNK = 1 << 20  # elements per isfinite() pass: a bool scratch of 1 MB, not the tensor's size


def check_out_dir(out_dir: Path) -> None:
    """Raise UsageError (one line) when ``out_dir`` cannot receive a merged model."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise UsageError(f"{out_dir}: output path is a symbolic link (to {os.readlink(out_dir)}); "
                         "give the real directory path as --out")
    try:
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise UsageError(f"{out_dir}: output directory exists and is not empty; choose another --out")
    except OSError as exc:
        raise UsageError(f"{out_dir}: cannot use as output directory ({exc.strerror}); choose another --out") from None
    ancestor = out_dir.absolute().parent
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent  # the nearest existing folder is where directories get created
    if not ancestor.is_dir():
        raise UsageError(f"{out_dir}: {ancestor} is not a directory; choose another --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UsageError(f"{out_dir}: cannot write in {ancestor} (permission denied); choose a writable --out")


def make_temp_dir(out_dir: Path) -> Path:
    """A fresh temp dir beside ``out_dir`` (same filesystem, so the final rename is atomic). Temp
    dirs of earlier merges into the same ``out_dir`` whose process is gone (killed) are removed."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        for old in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.tmp-*"):
            pid = old.name.rpartition(".tmp-")[2]
            if pid.isdigit() and old.is_dir() and not old.is_symlink() and not process_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise UsageError(f"{out_dir}: cannot create the output directory ({exc.strerror}); "
                         "choose a writable --out") from None
    return tmp


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a temp dir named with it is still in use)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def place_output(tmp: Path, out_dir: Path) -> None:
    """Rename the finished temp dir to ``out_dir`` (which is absent or an empty directory)."""
    try:
        if out_dir.is_dir() and not out_dir.is_symlink():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except OSError as exc:  # --out changed while merging (became a file, a link, non-empty)
        raise UsageError(f"{out_dir}: cannot move the merged model into place ({exc.strerror}); "
                         "choose another --out") from None


def all_finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in ``tensor``, checked in chunks so the scratch stays small."""
    flat = tensor.reshape(-1)
    return all(bool(torch.isfinite(flat[s:s + _FINITE_CHUNK]).all())
               for s in range(0, flat.numel(), _FINITE_CHUNK))
