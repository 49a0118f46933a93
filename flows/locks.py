"""Per-model file locks under ``$MERGEOPS_HOME/locks``: one writer of a model's versions at a time.

A watch holds its recipe's lock while it decides and re-merges; the pipeline takes the same lock
around "is a version with these bytes registered? if not, register one", so two runs of one recipe
(two shells, a cron tick and an event, two machines on one shared home) register one version, not
two. ``flock`` locks belong to an open file, so a second ``open`` of the same lock in one process
would wait for itself: holds are counted per process, and only the first one locks the file.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_depth: dict[Path, int] = {}  # holds by the thread that owns the path's RLock
_rlocks: dict[Path, threading.RLock] = {}
_registry = threading.Lock()


@contextmanager
def model_lock(home: Path, name: str) -> Iterator[None]:
    path = (Path(home) / "locks" / f"watch-{name}.lock").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _registry:
        rlock = _rlocks.setdefault(path, threading.RLock())
    with rlock:  # other threads of this process wait here; this thread may re-enter
        if _depth.get(path):
            _depth[path] += 1
            try:
                yield
            finally:
                _depth[path] -= 1
            return
        with open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # other processes wait here
            _depth[path] = 1
            try:
                yield
            finally:
                _depth.pop(path, None)
                fcntl.flock(fh, fcntl.LOCK_UN)
