"""Read and validate a safetensors header without trusting it.

Layout: 8 bytes little-endian u64 ``n``, then ``n`` bytes of UTF-8 JSON, then the data buffer.
Everything is checked against the real file size before anything else reads the file, so a
crafted header (a 2^60-byte length, overlapping or out-of-range offsets, an unknown dtype)
is a ``FormatError`` and never an allocation or a read past the end.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from merge.errors import FormatError

# Same ceiling as the safetensors library: a header beyond 100 MB is not a real checkpoint.
MAX_HEADER_BYTES = 100_000_000

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


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and fully validate the header of ``path``; never reads the data buffer."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise _fail(path, f"file is {file_size} bytes, shorter than the 8-byte length prefix")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES:
                raise _fail(path, f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte limit")
            if 8 + n > file_size:
                raise _fail(path, f"header length {n} runs past the end of the {file_size}-byte file (truncated?)")
            raw = fh.read(n)
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"header is not valid UTF-8 JSON ({exc})") from exc
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
            raise _fail(path, f"tensor {info.name!r} overlaps the previous tensor (offset {info.start} < {cursor})")
        if info.start > cursor:
            raise _fail(path, f"gap of {info.start - cursor} bytes before tensor {info.name!r}")
        cursor = info.end
    if cursor != buffer_size:
        raise _fail(path, f"tensors cover {cursor} bytes but the data buffer holds {buffer_size} (truncated or padded file)")
    return SafetensorsHeader(path=path, tensors=tensors, metadata=dict(metadata), data_offset=8 + n)


def _tensor_info(path: Path, name: str, spec: object, buffer_size: int) -> TensorInfo:
    if not isinstance(spec, dict):
        raise _fail(path, f"entry {name!r} is not an object")
    dtype = spec.get("dtype")
    if dtype not in DTYPE_SIZES:
        raise _fail(path, f"tensor {name!r} has unknown dtype {dtype!r}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _fail(path, f"tensor {name!r} has a malformed shape {shape!r}")
    offsets = spec.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise _fail(path, f"tensor {name!r} has malformed data_offsets {offsets!r}")
    start, end = offsets
    if not 0 <= start <= end <= buffer_size:
        raise _fail(path, f"tensor {name!r} offsets [{start}, {end}] lie outside the {buffer_size}-byte data buffer")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - start != expected:
        raise _fail(path, f"tensor {name!r} spans {end - start} bytes but {dtype}{shape} needs {expected}")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), start=start, end=end)
