"""Named crash points: ``MERGEOPS_CRASH_AT=<name>`` kills the process there, as a power cut or an
OOM kill would, so tests can prove that the next run completes or rolls back what was left."""

from __future__ import annotations

import os
import signal

ENV = "MERGEOPS_CRASH_AT"


def crash_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
