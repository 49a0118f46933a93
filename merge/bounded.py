"""Reading what a user hands us, within bounds: a size limit, regular files only, strict UTF-8,
YAML whose aliases cannot expand into an exponential tree, JSON of bounded depth.

Every reader of a recipe, policy, suite, project config, model card, tokenizer file, shard index or
safetensors header goes through here, so a hostile file (``/dev/zero``, a FIFO, a 50 MB recipe, a
YAML alias bomb, JSON nested ten thousand deep) costs a bounded amount of time and memory and ends
in one ``UsageError`` line that names the file and what to do.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from merge.errors import UnsafeInput, UsageError

KIB, MIB = 1 << 10, 1 << 20
# A recipe, policy, suite or config is a few KiB; a model card with its prose tens of KiB.
TEXT_LIMIT = 4 * MIB
# Aliases may repeat a subtree; beyond this many nodes after expansion it is a bomb, not a recipe.
YAML_MAX_NODES = 200_000
YAML_MAX_DEPTH = JSON_MAX_DEPTH = 64
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(r"[\[\]{}]")


def read_bytes(path: Path | str, *, limit: int = TEXT_LIMIT, what: str = "file",
               inside: Path | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes. Refuses FIFOs, devices, sockets and
    directories without opening them (a FIFO would block, ``/dev/zero`` never ends); with
    ``inside``, also a symlink that resolves outside that directory."""
    path = Path(path)
    info = regular_file(path, what=what, inside=inside)
    if info.st_size > limit:
        raise UnsafeInput(f"{path}: {what} is {info.st_size:,} bytes, over the {limit:,}-byte limit; is it the right file?")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # a file swapped for a FIFO since stat() must not block
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        # read(n) allocates n bytes up front: ask for the file's size, not the limit (2 GiB for a data file)
        size = os.fstat(fd).st_size
        data = fh.read(min(limit, size) + 1)
        if size < len(data) <= limit:  # it grew since fstat (or /proc reports 0): the rest, within the limit
            data += fh.read(limit + 1 - len(data))
    if len(data) > limit:
        raise UnsafeInput(f"{path}: {what} is over the {limit:,}-byte limit; is it the right file?")
    return data


def regular_file(path: Path, *, what: str, inside: Path | None = None) -> os.stat_result:
    """The stat of ``path`` when it is a regular file (symlinks followed; with ``inside``, only
    when the link stays in that directory); a UsageError line for a FIFO, device, socket or dir."""
    try:
        info = path.stat()  # follows symlinks: what would be read
    except FileNotFoundError:
        raise UsageError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read {what} ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, device or socket)"
        raise UnsafeInput(f"{path}: {what} is {kind}; give a regular file")
    if inside is not None:
        real, root = path.resolve(), Path(inside).resolve()
        if real != root and root not in real.parents:
            raise UnsafeInput(f"{path}: {what} is a link to {real}, outside {root}; copy the file in")
    return info


def decode_text(data: bytes, *, what: str) -> str:
    """Strict UTF-8 (a UTF-8 byte-order mark is allowed); anything else is one clear line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16; save it as UTF-8)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise UsageError(f"{what}: not UTF-8 text (byte {exc.start}){hint}") from None


def read_text(path: Path | str, *, limit: int = TEXT_LIMIT, what: str = "file", inside: Path | None = None) -> str:
    return decode_text(read_bytes(path, limit=limit, what=what, inside=inside), what=f"{path}: {what}")


class _AliasBomb(yaml.YAMLError):
    pass


class _BudgetLoader(yaml.SafeLoader):
    """SafeLoader that counts the nodes aliases would expand to and stops past a budget, and stops
    nesting deeper than YAML_MAX_DEPTH (the composer recurses once per level)."""

    max_nodes = YAML_MAX_NODES

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._expanded = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}

    def _size(self, node: yaml.Node) -> int:
        key = id(node)
        if key not in self._sizes:
            self._sizes[key] = 1  # a recursive alias counts once; its expansion is caught by the budget
            if isinstance(node, yaml.SequenceNode):
                self._sizes[key] = 1 + sum(self._size(n) for n in node.value)
            elif isinstance(node, yaml.MappingNode):
                self._sizes[key] = 1 + sum(self._size(k) + self._size(v) for k, v in node.value)
        return self._sizes[key]

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            anchor = self.peek_event().anchor
            if anchor in self.anchors:
                self._expanded += self._size(self.anchors[anchor])
                if self._expanded > self.max_nodes:
                    raise _AliasBomb(f"aliases expand to more than {self.max_nodes:,} nodes "
                                         f"(repeated anchor &{anchor})")
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise _AliasBomb(f"nested deeper than {YAML_MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str, *, what: str) -> Any:
    """``yaml.safe_load`` with an alias-expansion budget; a YAML error is one UsageError line."""
    return _load(text, what, yaml.load)


def load_yaml_all(text: str, *, what: str) -> list[Any]:
    """Every document of a multi-document YAML stream (``---`` separated), under one alias budget."""
    return _load(text, what, lambda t, Loader: list(yaml.load_all(t, Loader=Loader)))


def last_mapping(text: str, *, what: str) -> dict:
    """The last document of a YAML stream when it is a mapping, else {} (unreadable text too): a
    multi-stage recipe's output stage, for records that read its ``name`` or ``intended_use``."""
    try:
        docs = [d for d in load_yaml_all(text, what=what) if d is not None]
    except UsageError:
        return {}
    return docs[-1] if docs and isinstance(docs[-1], dict) else {}


def _load(text: str, what: str, load) -> Any:
    try:
        return load(text, Loader=_BudgetLoader)  # a SafeLoader subclass
    except _AliasBomb as exc:
        raise UnsafeInput(f"{what}: not valid YAML ({exc})") from None
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()
        raise UsageError(f"{what}: not valid YAML ({' '.join(first[:2]) if first else 'unreadable'})") from None
    except RecursionError:
        raise UnsafeInput(f"{what}: YAML nested too deeply") from None
    except ValueError as exc:  # a number past what Python converts (an integer of 4,300+ digits)
        raise UsageError(f"{what}: not valid YAML ({str(exc)[:120]})") from None


def loads_json(data: bytes | str, *, what: str, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """``json.loads`` that refuses nesting deeper than ``max_depth`` and invalid UTF-8 on one line."""
    if isinstance(data, bytes):
        data = decode_text(data, what=what)
    depth = 0
    for match in _BRACKETS.finditer(_STRINGS.sub('""', data)):  # brackets outside strings; never recurses
        depth += 1 if match.group() in "[{" else -1
        if depth > max_depth:
            raise UnsafeInput(f"{what}: JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # ValueError: also an integer of 4,300+ digits
        raise UsageError(f"{what}: not valid JSON ({str(exc)[:200]})") from None
