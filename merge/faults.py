"""Named crash points: ``MERGEOPS_CRASH_AT=<name>`` kills the process there, as a power cut or an
OOM kill would, so tests can prove that the next run completes or rolls back what was left.

``at(name, action)`` runs ``action`` when the point is reached instead (a test that swaps a
parent's file between the audit and the merge's reads, say); nothing runs unless a test asks.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

ENV = "MERGEOPS_CRASH_AT"
_actions: dict[str, list[Callable[[], None]]] = {}


def crash_point(name: str) -> None:
    for action in _actions.get(name, ()):
        action()
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def at(name: str, action: Callable[[], None]) -> Iterator[None]:
    """Run ``action`` each time the point ``name`` is reached, inside the ``with`` block."""
    _actions.setdefault(name, []).append(action)
    try:
        yield
    finally:
        _actions[name].remove(action)
        if not _actions[name]:
            del _actions[name]
