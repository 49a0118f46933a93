"""Temp dirs of dead runs: a merge builds in ``.<name>.tmp-<pid>`` beside its target and the
registry stages a release in ``.register-<pid>-*``; a run killed mid-way leaves them (hundreds of
MB for a real model). The next run on this machine removes those whose process is gone."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from merge.output import process_alive

_TEMP = re.compile(r"^\.(?:.+\.tmp-|register-)(\d+)(?:-.*)?$")


def sweep_dead_temp_dirs(folder: Path) -> list[Path]:
    """Remove the temp dirs in ``folder`` whose owning process no longer runs; return them."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not process_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
