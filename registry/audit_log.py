"""A tamper-evident, append-only audit log of every registry state change.

One JSON object per line (canonical JSON): ``{"seq", "at", "event", "actor", "authenticated",
"data", "prev", "key_id", "hash", "sig"}``. ``hash`` is the sha256 of the canonical JSON of the
entry without ``hash`` and ``sig``; ``prev`` is the previous entry's ``hash`` (64 zeros for the
first); ``sig`` is the writer's ECDSA signature of ``hash`` (registry/keys.py), ``key_id`` names its
key. A chain alone can be rewritten whole by anyone who can write the file; signatures cannot be
made without the key, which only the writer of the governed state holds (the governance service,
or in embedded mode the store's owner). Entries written before signing existed are accepted only
as a prefix: an unsigned entry after a signed one is a forgery. Editing a line breaks its own hash (or, if the
editor recomputed it, the next line's ``prev``); deleting or reordering lines breaks ``seq`` and
the chain. Appends take an exclusive ``flock`` so concurrent writers (a CLI approval while a flow
registers) never interleave or fork the chain.

Neither can tell a log whose tail was cut, or whose last entry was rewritten with a fresh
hash, from an honest shorter log: ``verify(anchors=...)`` also checks ``(seq, hash)`` pairs kept
elsewhere. The registry mirrors each entry's pair into MLflow tags for that purpose.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Callable

from merge.bounded import regular_file
from merge.manifest import canonical_json
from registry.errors import AuditLogTampered, RegistryError
from registry.identity import Actor
from registry.keys import SigningKey, default_key_path, load_signing_key, verify_signature

GENESIS = "0" * 64
EVENTS = ("registered", "approved", "rejected", "promoted", "verified", "remerge_triggered")


def _entry_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


class AuditLog:
    """``AuditLog(path).append("approved", actor=..., model=..., version=...)``; ``.verify()``.

    ``key`` signs appended entries (default: registry/keys.py ``default_key_path`` beside the log,
    created on first use); ``public`` checks them in ``verify`` (None: the chain only).
    """

    def __init__(self, path: Path, *, key: SigningKey | None = None, public: bytes | None = None):
        self.path = Path(path)
        self._key = key
        self.public = public

    @property
    def key(self) -> SigningKey:
        if self._key is None:
            self._key = load_signing_key(default_key_path(self.path), create=True)
        return self._key

    def append(self, event: str, *, actor: Actor | None = None, check: Callable[[list[dict]], None] | None = None,
               **data: object) -> dict:
        """Append one signed entry under an exclusive lock and return it.

        ``check(entries)`` runs under the lock on every entry so far, before the append, and raises
        to refuse it: a compare-and-set, so two writers deciding one version cannot both succeed.
        """
        if event not in EVENTS:
            raise RegistryError(f"unknown audit-log event {event!r}; use one of {', '.join(EVENTS)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            regular_file(self.path, what="audit log")  # a FIFO or /dev/zero: one line, not a hang
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                lines = [ln for ln in fh.read().split(b"\n") if ln]
                try:
                    entries = [json.loads(ln) for ln in (lines if check else lines[-1:])]
                    prev = entries[-1]["hash"] if entries else GENESIS
                except (ValueError, RecursionError, KeyError, TypeError) as exc:
                    raise AuditLogTampered(f"{self.path}:{len(lines)}: unreadable entry; "
                                           "run `mergeops log verify` and restore the log") from exc
                if check:
                    check(entries)
                actor = actor or Actor.typed(None, "actor")
                entry = {"seq": len(lines) + 1, "at": datetime.now(UTC).isoformat(timespec="microseconds"),
                         "event": event, "actor": actor.id, "authenticated": actor.authenticated, "data": data,
                         "prev": prev, "key_id": self.key.key_id}
                entry["hash"] = _entry_hash(entry)
                entry["sig"] = self.key.sign(entry["hash"].encode("ascii"))
                line = canonical_json(entry)
                fh.seek(0, os.SEEK_END)
                fh.write(line + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return entry

    def entries(self) -> list[dict]:
        """Every entry, verified first (a tampered log is never read as if it were sound)."""
        self.verify()
        if not self.path.exists():
            return []
        return [json.loads(ln) for ln in self.path.read_bytes().split(b"\n") if ln]

    def head(self) -> str:
        """The hash of the last entry (``GENESIS`` for an empty log)."""
        return self.verify()[1]

    def verify(self, anchors: list[tuple[int, str, str]] = ()) -> tuple[int, str]:
        """Check the whole chain; return ``(entries, head hash)`` or raise naming the first bad line.

        ``anchors`` are ``(seq, hash, where)`` triples recorded elsewhere (``where`` names the copy,
        e.g. an MLflow model version); each must match the log's entry ``seq``.
        """
        if not self.path.exists():
            if anchors:
                raise AuditLogTampered(f"{self.path}: missing, but {anchors[0][2]} records entry {anchors[0][0]}")
            return 0, GENESIS
        regular_file(self.path, what="audit log")  # a FIFO, directory or /dev/zero: one line, not a hang
        with open(self.path, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH)
            try:
                raw = fh.read()
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        if raw and not raw.endswith(b"\n"):
            raise AuditLogTampered(f"{self.path}: the last line is incomplete; the log was truncated or edited")
        prev, hashes, signed = GENESIS, {}, False
        for lineno, line in enumerate(raw.split(b"\n")[:-1], start=1):
            where = f"{self.path}:{lineno}"
            try:
                entry = json.loads(line)
            except (ValueError, RecursionError) as exc:  # also bytes that are not UTF-8, nesting too deep
                raise AuditLogTampered(f"{where}: not valid JSON ({getattr(exc, 'msg', type(exc).__name__)}); "
                                       "the line was edited") from None
            if not isinstance(entry, dict) or canonical_json(entry) != line:
                raise AuditLogTampered(f"{where}: not in canonical form; the line was edited")
            if entry.get("seq") != lineno:
                raise AuditLogTampered(
                    f"{where}: holds entry seq {entry.get('seq')!r}; entries were deleted or reordered")
            if entry.get("hash") != _entry_hash(entry):
                raise AuditLogTampered(f"{where}: entry hash does not match its content; the line was edited")
            if entry.get("prev") != prev:
                raise AuditLogTampered(
                    f"{where}: previous-entry hash does not match line {lineno - 1}; "
                    "an entry was edited, deleted or reordered")
            if "sig" in entry:
                signed = True
                if self.public is not None and not verify_signature(self.public, entry["hash"].encode("ascii"),
                                                                    entry["sig"]):
                    raise AuditLogTampered(f"{where}: the signature does not match the trusted key "
                                           f"(entry signed by key {entry.get('key_id')!r}); the entry was forged")
            elif signed:
                raise AuditLogTampered(f"{where}: unsigned entry after signed ones; the entry was forged")
            prev = hashes[lineno] = entry["hash"]
        for seq, digest, source in anchors:
            if seq not in hashes:
                raise AuditLogTampered(
                    f"{self.path}: has {len(hashes)} entries but {source} records entry {seq}; entries were deleted")
            if hashes[seq] != digest:
                raise AuditLogTampered(
                    f"{self.path}:{seq}: differs from the copy in {source}; the line was edited")
        return len(hashes), prev
