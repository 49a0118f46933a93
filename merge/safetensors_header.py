"""Read and validate a safetensors header without trusting it.

Layout: 8 bytes little-endian u64 ``n``, then ``n`` bytes of UTF-8 JSON, then the data buffer.
Everything is checked against the real file size before anything else reads the file, so a
crafted header (a 2^60-byte length, overlapping or out-of-range offsets, an unknown dtype)
is a ``FormatError`` and never an allocation or a read past the end.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from merge.bounded import MIB, loads_json
from merge.errors import FormatError, UsageError

# The format allows 100 MB; we allow 16 MiB. Each tensor's entry is ~100 bytes, so that is ~150k
# tensors in one shard, ten times any published checkpoint's (a 1,000-tensor shard has ~100 KB),
# while parsing a header costs 10-20x its size in Python objects: 16 MiB stays under ~300 MB per
# shard, 100 MB would be 1-2 GB for one crafted file.
MAX_HEADER_BYTES = 16 * MIB
# root → entry → shape/data_offsets list: depth 3. Anything deeper is not a safetensors header,
# and refusing it before parsing keeps a 10,000-deep nest from reaching the recursive parser.
_MAX_DEPTH = 3
_MAX_DIM = 1 << 62  # a dimension or offset beyond this addresses more bytes than exist
_MAX_RANK = 16

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # offset into the data buffer
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_offset: int = 0  # absolute file offset where the data buffer starts


def _fail(path: Path, why: str) -> FormatError:
    return FormatError(f"{path}: invalid safetensors file: {why}")


def _count(value: object) -> bool:
    """A non-negative int that can address a real byte (JSON true/false are not ints here)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_DIM


def _short(value: object) -> str:
    """A crafted value may be megabytes long; an error line shows its start only."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and fully validate the header of ``path``; never reads the data buffer."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        return header_of(fd, path)
    finally:
        os.close(fd)


def header_of(fd: int, path: Path) -> SafetensorsHeader:
    """``read_header`` of an open file: the header of exactly the file a reader holds open."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # /dev/zero, a FIFO, a socket: never a checkpoint
        raise _fail(path, "not a regular file (a FIFO, device or socket)")
    file_size = info.st_size
    prefix = os.pread(fd, 8, 0)
    if len(prefix) < 8:
        raise _fail(path, f"file is {file_size} bytes, shorter than the 8-byte length prefix")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise _fail(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > file_size:
        raise _fail(path, f"header length {n} runs past the end of the {file_size}-byte file (truncated?)")
    raw = os.pread(fd, n, 8)
    if len(raw) != n:
        raise _fail(path, f"header is {len(raw)} bytes, not the {n} its length prefix says (file changed?)")
    try:
        doc = loads_json(raw, what="header", max_depth=_MAX_DEPTH)
    except UsageError as exc:
        raise _fail(path, str(exc)) from None
    if not isinstance(doc, dict):
        raise _fail(path, "header is not a JSON object")

    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail(path, "__metadata__ must map strings to strings")

    buffer_size = file_size - 8 - n
    tensors: dict[str, TensorInfo] = {}
    for name, spec in doc.items():
        tensors[name] = _tensor_info(path, name, spec, buffer_size)

    # Tensors must tile the buffer exactly: no overlap, no gap, nothing hidden after the end.
    cursor = 0
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start < cursor:
            raise _fail(path, f"tensor {_short(info.name)} overlaps the previous tensor (offset {info.start} < {cursor})")
        if info.start > cursor:
            raise _fail(path, f"gap of {info.start - cursor} bytes before tensor {_short(info.name)}")
        cursor = info.end
    if cursor != buffer_size:
        raise _fail(path, f"tensors cover {cursor} bytes but the data buffer holds {buffer_size} (truncated or padded file)")
    return SafetensorsHeader(path=path, tensors=tensors, metadata=dict(metadata), data_offset=8 + n)


def _tensor_info(path: Path, name: str, spec: object, buffer_size: int) -> TensorInfo:
    if not isinstance(spec, dict):
        raise _fail(path, f"entry {_short(name)} is not an object")
    dtype = spec.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise _fail(path, f"tensor {_short(name)} has unknown dtype {_short(dtype)}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or len(shape) > _MAX_RANK or not all(_count(d) for d in shape):
        raise _fail(path, f"tensor {_short(name)} has a malformed shape {_short(shape)}")
    offsets = spec.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_count(o) for o in offsets):
        raise _fail(path, f"tensor {_short(name)} has malformed data_offsets {_short(offsets)}")
    start, end = offsets
    if not 0 <= start <= end <= buffer_size:
        raise _fail(path, f"tensor {_short(name)} offsets [{start}, {end}] lie outside the {buffer_size}-byte data buffer")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - start != expected:
        raise _fail(path, f"tensor {_short(name)} spans {end - start} bytes but {dtype}{shape} needs {expected}")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), start=start, end=end)
