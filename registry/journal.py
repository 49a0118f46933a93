"""The registration journal: what a registration in flight has done, so a killed one is finished or undone.

A registration is a small state machine, one JSON file per attempt under ``<audit log's folder>/journal/``:

    intent → artifacts (versioned in DVC) → run (MLflow run logged) → version (model version
    created) → logged (its ``registered`` audit-log entry appended) → done (the file is removed)

Each step is recorded (temp file, fsync, rename) right after its work, and the attempt's id is
tagged onto the MLflow run it creates, so a kill between doing a step and recording it is still
found (registry/recovery.py). The live owner holds an ``flock`` on ``<attempt>.lock`` (never
replaced, unlike the JSON beside it) for its whole life; the kernel drops it when the process
dies, so "the lock can be taken" means "its owner is gone", with no pid to be reused. Nothing here
talks to MLflow.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from merge.bounded import read_bytes
from merge.errors import UsageError
from merge.faults import crash_point
from merge.manifest import canonical_json
from registry.errors import RegistryError

STATES = ("intent", "artifacts", "run", "version", "logged")
_MAX_ENTRY_BYTES = 64 * 1024
_held: dict[Path, Registration] = {}  # this process's live registrations, by file


def journal_dir(audit_log_path: Path) -> Path:
    return Path(audit_log_path).parent / "journal"


@dataclass
class Registration:
    """One attempt: ``facts`` holds attempt, model, content_id, state, and run_id/version once known."""

    path: Path
    facts: dict
    _fh: IO[bytes] | None = field(default=None, repr=False)
    finished: bool = False

    @property
    def state(self) -> str:
        return self.facts["state"]

    @property
    def attempt(self) -> str:
        return self.facts["attempt"]

    def advance(self, state: str, **facts: object) -> None:
        """Record that the work of ``state`` is done (with what it made, e.g. ``run_id``)."""
        if STATES.index(state) < STATES.index(self.state):
            raise RegistryError(f"journal {self.path.name}: cannot go back from {self.state} to {state}")
        self.facts |= {**facts, "state": state, "at": _now()}
        _write(self.path, self.facts)
        crash_point(f"journal.{state}")

    def done(self) -> None:
        """The registration is complete (or rolled back): forget it."""
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".lock").unlink(missing_ok=True)
        self.finished = True
        self.release()

    def release(self) -> None:
        _held.pop(self.path, None)
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def begin(audit_log_path: Path, model: str, content_id: str) -> Registration:
    """Record the intent to register ``content_id`` as a version of ``model``; the caller owns it."""
    folder = journal_dir(audit_log_path)
    folder.mkdir(parents=True, exist_ok=True)
    attempt = uuid.uuid4().hex
    path = folder / f"{attempt}.json"
    facts = {"attempt": attempt, "model": model, "content_id": content_id, "state": "intent",
             "host": socket.gethostname(), "pid": os.getpid(), "started_at": _now(), "at": _now()}
    # Locked under a hidden name, then renamed (the inode, and so the lock, stays): nobody can find
    # the lock file free while its owner lives.
    staging = folder / f".{attempt}.lock"
    fh = open(staging, "a+b")  # noqa: SIM115 (held for the registration's life)
    fcntl.flock(fh, fcntl.LOCK_EX)
    os.rename(staging, path.with_suffix(".lock"))
    _write(path, facts)
    reg = Registration(path, facts, fh)
    _held[path] = reg
    crash_point("journal.intent")
    return reg


def held(path: str | Path) -> Registration:
    """The live registration this process began at ``path`` (passed by path across task boundaries)."""
    try:
        return _held[Path(path)]
    except KeyError:
        raise RegistryError(f"{path}: not a registration this process holds") from None


def abandoned(audit_log_path: Path, model: str | None = None) -> list[Registration]:
    """Registrations whose owner died before finishing (their lock is free), oldest first, each
    now locked by the caller (``done()`` or ``release()`` it). Unreadable files are named, not skipped."""
    folder = journal_dir(audit_log_path)
    if not folder.is_dir():
        return []
    out = []
    for lock in sorted(folder.glob("*.lock")):
        path = lock.with_suffix(".json")
        if lock.name.startswith(".") or path in _held:
            continue
        fh = open(lock, "a+b")  # noqa: SIM115
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()  # its owner is alive: a registration in progress
            continue
        if not path.exists():  # killed between removing its record and its lock, or before the first write
            lock.unlink(missing_ok=True)
            fh.close()
            continue
        try:
            facts = json.loads(read_bytes(path, limit=_MAX_ENTRY_BYTES, what="journal entry"))
            if not isinstance(facts, dict) or facts.get("state") not in STATES or not facts.get("attempt"):
                raise ValueError("not a journal entry")
        except (ValueError, UnicodeDecodeError, UsageError) as exc:
            fh.close()
            raise RegistryError(f"{path}: unreadable journal entry ({exc}); look at it and remove it") from None
        if model is not None and facts.get("model") != model:
            fh.close()
            continue
        out.append(Registration(path, facts, fh))
    return sorted(out, key=lambda r: r.facts.get("started_at", ""))


def _write(path: Path, facts: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(canonical_json(facts) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # the lock is on the open file description, which outlives the rename


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
