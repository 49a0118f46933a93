"""Streaming safetensors output: headers are fixed up front from the plan, then each tensor's
bytes are appended as soon as it is merged and hashed on the way (no second read for the manifest).

Because every output name, shape and dtype is known before the first weight is read, the header
(offsets included) can be written first; memory then holds one output tensor at a time.
Tensors are stored in plan order; ``__metadata__`` carries the recipe's sha256.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from merge.layout import INDEX_NAME
from merge.safetensors_header import DTYPE_SIZES

DEFAULT_SHARD_BYTES = 2 * 1024**3


@dataclass
class _Shard:
    name: str
    tensors: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)  # (name, dtype, shape)
    nbytes: int = 0


def _nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return DTYPE_SIZES[dtype] * math.prod(shape)


def layout_shards(tensors: list[tuple[str, str, tuple[int, ...]]], max_bytes: int) -> list[_Shard]:
    """Greedy, in plan order: a new shard starts when the next tensor would exceed ``max_bytes``."""
    shards: list[_Shard] = [_Shard("")]
    for name, dtype, shape in tensors:
        size = _nbytes(dtype, shape)
        if shards[-1].tensors and shards[-1].nbytes + size > max_bytes:
            shards.append(_Shard(""))
        shards[-1].tensors.append((name, dtype, shape))
        shards[-1].nbytes += size
    n = len(shards)
    for i, s in enumerate(shards):
        s.name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
    return shards


def _header_bytes(shard: _Shard, metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in shard.tensors:
        size = _nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data buffer 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


class ShardWriter:
    """Append tensors in the planned order; ``close`` returns {file name: (sha256, size)}."""

    def __init__(self, out_dir: Path, shards: list[_Shard], metadata: dict[str, str]):
        self._dir = Path(out_dir)
        self._shards = shards
        self._meta = metadata
        self._where = {t[0]: (i, t) for i, s in enumerate(shards) for t in s.tensors}
        self._current = -1
        self._fh = None
        self._hash = None
        self._next = 0  # position in the current shard's tensor list
        self.done: dict[str, tuple[str, int]] = {}

    def _open(self, i: int) -> None:
        self._finish()
        self._current, self._next = i, 0
        self._fh = open(self._dir / self._shards[i].name, "wb")
        self._hash = hashlib.sha256()
        self._emit(_header_bytes(self._shards[i], self._meta))

    def _emit(self, data) -> None:
        self._fh.write(data)
        self._hash.update(data)

    def _finish(self) -> None:
        if self._fh is not None:
            self._fh.close()
            name = self._shards[self._current].name
            self.done[name] = (self._hash.hexdigest(), (self._dir / name).stat().st_size)
            self._fh = None

    def write(self, name: str, tensor: torch.Tensor) -> None:
        i, (_, dtype, shape) = self._where[name]
        if i != self._current:
            self._open(i)
        expected = self._shards[i].tensors[self._next]
        if expected[0] != name or tuple(tensor.shape) != shape:
            raise RuntimeError(f"writer: got {name} {tuple(tensor.shape)}, planned {expected[0]} {expected[2]}")
        self._next += 1
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._emit(memoryview(data))

    def close(self) -> dict[str, tuple[str, int]]:
        self._finish()
        return self.done

    def write_index(self) -> Path | None:
        if len(self._shards) == 1:
            return None
        total = sum(s.nbytes for s in self._shards)
        weight_map = {t[0]: s.name for s in self._shards for t in s.tensors}
        doc = {"metadata": {"total_size": total, **self._meta}, "weight_map": dict(sorted(weight_map.items()))}
        path = self._dir / INDEX_NAME
        path.write_text(json.dumps(doc, indent=2) + "\n")
        return path
