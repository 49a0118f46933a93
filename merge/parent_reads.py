"""The parents a merge reads are the parents that were audited: every byte the merge uses is part of
the sha256 behind the parent's content id, and that id is compared with the audit's at the end.

Each parent file is opened once. A shard's header is parsed again from the open file and must be
the one the plan was made from; tensors are read from that descriptor (``os.preadv``) and fed to
the file's sha256 in plan order, so in the common case the merge's own reads are the hashing reads
(one pass over the bytes, not a hash pass and then a merge pass). Where the plan reads ahead of
the file's order (``layers.2`` after ``layers.19`` in a name-sorted shard, a head stored first),
the bytes in between are read and hashed now, with a sha256 of each tensor among them that the
merge reads later; that later read must give the same digest. Bytes the merge never reads (the
header, unused tensors, other files) are hashed from the same descriptors. Side files that the merge
copies (config, tokenizer) are copied from the very bytes that were hashed.

A file edited in place, or swapped, at any point after the audit gives another content id or a
digest mismatch: ``PinMismatch`` names the parent and the file, and the merge writes nothing.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import threading
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from merge.errors import PinMismatch
from merge.faults import crash_point
from merge.manifest import FileEntry, content_id_of, model_files, sha256_file
from merge.model_dir import FILE_LIMITS, read_model_bytes
from merge.safetensors_header import header_of

_CHUNK = 8 << 20  # bytes per read of what the merge does not read itself


@dataclass(frozen=True)
class Read:
    """One tensor's bytes as the merge read them: ``(shard file, absolute offset, buffer)``."""

    stream: _Stream
    start: int
    data: torch.Tensor  # uint8


class _Stream:
    """One parent shard, hashed front to back while the merge reads it out of order."""

    def __init__(self, ref: str, rel: str, fd: int, regions: list[tuple[int, int]], recheck: set[int]):
        self.ref, self.rel, self.fd = ref, rel, fd
        self._regions = regions  # every tensor's absolute [start, end), in file order
        self._starts = [lo for lo, _ in regions]
        self._recheck = recheck  # starts of the tensors read after the hash has passed them
        self._digests: dict[int, bytes] = {}
        self._sha, self.pos = hashlib.sha256(), 0
        self.turn = 0  # reads of this file hashed so far (ParentReads.feed)
        self._scratch = bytearray(_CHUNK)

    def feed(self, start: int, data: memoryview) -> None:
        if start < self.pos:  # hashed already: these bytes must be the ones hashed then
            if hashlib.sha256(data).digest() != self._digests.get(start):
                raise self._changed("a tensor changed while the merge read it")
            return
        self._hash_to(start)
        self._sha.update(data)
        if start in self._recheck:  # read again later (a repeated layer): keep its digest
            self._digests[start] = hashlib.sha256(data).digest()
        self.pos = start + len(data)

    def finish(self) -> FileEntry:
        """Hash what is left to the end of the file (and past it, if the file grew)."""
        self._hash_to(self._regions[-1][1] if self._regions else self.pos)
        while n := self._pread(self.pos, _CHUNK):
            self._sha.update(memoryview(self._scratch)[:n])
            self.pos += n
        return FileEntry(path=self.rel, sha256=self._sha.hexdigest(), size=self.pos)

    def _hash_to(self, end: int) -> None:
        """Read and hash ``[pos, end)``: the header, then whole tensors, keeping the digest of each
        one the merge reads later. ``pos`` and ``end`` are always tensor boundaries."""
        spans = []
        if self._regions and self.pos < self._regions[0][0]:
            spans.append((self.pos, min(self._regions[0][0], end)))
        i = bisect.bisect_left(self._starts, self.pos)
        while i < len(self._regions) and self._regions[i][0] < end:
            spans.append(self._regions[i])
            i += 1
        for lo, hi in spans:
            region = hashlib.sha256() if lo in self._recheck else None
            at = lo
            while at < hi:
                n = self._pread(at, min(_CHUNK, hi - at))
                if n == 0:
                    raise self._changed("the file is shorter than its header says")
                chunk = memoryview(self._scratch)[:n]
                self._sha.update(chunk)
                if region is not None:
                    region.update(chunk)
                at += n
            if region is not None:
                self._digests[lo] = region.digest()
            self.pos = hi

    def _pread(self, offset: int, size: int) -> int:
        return os.preadv(self.fd, [memoryview(self._scratch)[:size]], offset)

    def _changed(self, why: str) -> PinMismatch:
        return PinMismatch(f"{self.ref}: {self.rel}: {why}; the parent is not the one audited: "
                           "nothing was written; re-audit it")


class ParentReads:
    """Every file of every parent, opened once and hashed from the bytes the merge uses."""

    def __init__(self, plan, stack: ExitStack):
        self._plan = plan
        self._aborted = False
        self._turn = threading.Condition()
        self._streams: dict[tuple[int, str], _Stream] = {}
        self._others: list[dict[str, FileEntry]] = []
        self._side: dict[str, bytes] = {}  # the config source's copied files, as hashed
        recheck, self._turns = _read_order(plan)
        for i, (ref, root, layout) in enumerate(zip(plan.refs, plan.parents, plan.layouts)):
            others = {}
            for rel, path in model_files(root):
                if rel in layout.shards:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
                    stack.callback(os.close, fd)
                    header = header_of(fd, path)
                    if header.tensors != layout.shards[rel].tensors or header.data_offset != layout.shards[rel].data_offset:
                        raise PinMismatch(f"{ref}: {rel}: changed after the merge was planned; nothing was written; "
                                          "re-audit it")
                    regions = sorted((header.data_offset + t.start, header.data_offset + t.end)
                                     for t in header.tensors.values() if t.nbytes)
                    self._streams[(i, rel)] = _Stream(ref, rel, fd, regions, recheck.get((i, rel), set()))
                elif i == plan.config_source and rel in FILE_LIMITS and "/" not in rel:
                    data = read_model_bytes(root, rel)  # bounded; copied from these very bytes
                    self._side[rel] = data
                    others[rel] = FileEntry(path=rel, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
                else:
                    others[rel] = FileEntry(path=rel, sha256=sha256_file(path), size=path.stat().st_size)
            self._others.append(others)
        crash_point("merge.parents-open")

    def read(self, parent: int, name: str) -> Read:
        layout = self._plan.layouts[parent]
        shard, info = layout.tensors[name]
        stream = self._streams[(parent, shard)]
        start = layout.shards[shard].data_offset + info.start
        buf = torch.empty(info.nbytes, dtype=torch.uint8)  # not zero-filled: preadv overwrites it
        got = os.preadv(stream.fd, [buf.numpy()], start) if info.nbytes else 0
        if got != info.nbytes:
            raise stream._changed(f"tensor {name!r} is truncated ({got} of {info.nbytes} bytes)")
        return Read(stream, start, buf)

    def feed(self, index: int, reads: list[Read]) -> None:
        """Hash the parents' reads of plan tensor ``index``. A file's sha256 is sequential, so each
        read waits until the file's earlier reads (earlier plan tensors) are hashed; reads of
        different files are hashed side by side."""
        for j, r in enumerate(reads):
            if not r.data.numel():
                continue
            turn = self._turns[(index, j)]
            with self._turn:
                self._turn.wait_for(lambda: r.stream.turn == turn or self._aborted)
                if self._aborted:
                    raise _Aborted()
            try:
                r.stream.feed(r.start, r.data.numpy().data)
            except BaseException:
                self.abort()
                raise
            with self._turn:
                r.stream.turn += 1
                self._turn.notify_all()
        crash_point("merge.tensor-fed")

    def abort(self) -> None:
        with self._turn:
            self._aborted = True
            self._turn.notify_all()

    def side_file(self, name: str) -> bytes | None:
        return self._side.get(name)

    def finish(self) -> list[list[FileEntry]]:
        """Every parent's manifest entries, from the bytes read."""
        out = [dict(others) for others in self._others]
        for (parent, rel), stream in self._streams.items():
            out[parent][rel] = stream.finish()
        return [sorted(entries.values(), key=lambda e: e.path) for entries in out]


class _Aborted(Exception):
    """Another tensor's read failed first; its error is the one reported."""


def _read_order(plan) -> tuple[dict[tuple[int, str], set[int]], dict[tuple[int, int], int]]:
    """Replays the plan's reads in order, as ``feed`` sees them: per shard, the tensors the merge
    reads after the file's hash has passed them (ahead of the file's order, or read twice), and
    each read's turn in its file, keyed by (plan tensor, input)."""
    pos: Counter = Counter()
    recheck: dict[tuple[int, str], set[int]] = {}
    turns: dict[tuple[int, int], int] = {}
    count: Counter = Counter()
    for k, tp in enumerate(plan.tensors):
        for j, (parent, name) in enumerate(tp.inputs):
            layout = plan.layouts[parent]
            shard, info = layout.tensors[name]
            start, key = layout.shards[shard].data_offset + info.start, (parent, shard)
            if not info.nbytes:
                continue
            turns[(k, j)] = count[key]
            count[key] += 1
            if start < pos[key]:
                recheck.setdefault(key, set()).add(start)
            else:
                pos[key] = start + info.nbytes
    return recheck, turns


def check_parents(plan, entries: list[list[FileEntry]], audited: dict[str, list[FileEntry]] | None) -> list[str]:
    """Each parent's content id, from the bytes read; PinMismatch naming the parent and the file
    when they are not the audited ones (``audited``: ref -> the audit's file list) or the recipe's pin."""
    ids = []
    for ref, files in zip(plan.refs, entries):
        cid = content_id_of(files)
        want = (audited or {}).get(ref)
        if want is not None and content_id_of(want) != cid:
            have, wanted = {e.path: e for e in files}, {e.path: e for e in want}
            name = next(p for p in sorted(have.keys() | wanted.keys()) if have.get(p) != wanted.get(p))
            what = ("is not in the audited parent" if name not in wanted else "is missing" if name not in have
                    else f"is not the audited file (sha256 {have[name].sha256[:12]}… ≠ {wanted[name].sha256[:12]}…)")
            raise PinMismatch(f"{ref}: {name} {what}; the parent changed after its audit: nothing was written; "
                              "re-audit it")
        pin = (plan.recipe.pins or {}).get(ref)
        if pin is not None and pin != cid:
            raise PinMismatch(f"{ref}: content id {cid[:12]}… does not match the recipe's pin {pin[:12]}…; the "
                              "parent changed since it was pinned: nothing was written; re-audit it and update pins")
        ids.append(cid)
    return ids
