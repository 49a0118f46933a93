"""A model directory as untrusted input: bounded reads of its files, and the checks every loader
runs before transformers or torch may touch it.

Hugging Face libraries open ``config.json``, the tokenizer files and the weights by name, with no
size limit and whatever the file is: a ``config.json`` linked to ``/dev/zero`` fills memory in
seconds, a FIFO hangs forever, a pickle under ``pytorch_model.bin`` or any other name runs code.
So mergeops reads these files only through ``read_model_bytes`` / ``read_model_json`` (regular
files, a size limit per file, links kept inside the directory), and ``check_loadable`` refuses a
directory that holds anything else before a model is loaded from it.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from merge.bounded import MIB, TEXT_LIMIT, decode_text, loads_json, read_bytes, regular_file
from merge.errors import FormatError, UnsafeInput, UsageError
from merge.hub import is_blob_link

# Per-file byte limits, with room above the largest published models': tokenizer.json reaches
# ~35 MB (Gemma, 256k tokens), a 100k-tensor shard index ~10 MB, a config or card tens of KiB.
FILE_LIMITS = {
    "config.json": TEXT_LIMIT,
    "generation_config.json": TEXT_LIMIT,
    "tokenizer.json": 64 * MIB,
    "tokenizer_config.json": 16 * MIB,
    "special_tokens_map.json": TEXT_LIMIT,
    "added_tokens.json": 16 * MIB,
    "vocab.json": 64 * MIB,
    "merges.txt": 64 * MIB,
    "tokenizer.model": 64 * MIB,
    "chat_template.jinja": TEXT_LIMIT,
    "chat_template.json": TEXT_LIMIT,
    "model.safetensors.index.json": 32 * MIB,
    "README.md": TEXT_LIMIT,
    "mergeops.manifest.json": 32 * MIB,
}
# tokenizer.json's merges are a flat list of pairs; nothing a model dir holds nests deeper.
MODEL_JSON_DEPTH = 32


def limit_of(name: str) -> int:
    return FILE_LIMITS.get(name, TEXT_LIMIT)


def read_model_bytes(model_dir: Path, name: str, *, what: str | None = None, limit: int | None = None) -> bytes:
    """The bytes of ``model_dir/name``: a regular file within its size limit whose symlinks stay in
    the directory (or, in a Hub cache snapshot, in its repo's ``blobs/``)."""
    model_dir = Path(model_dir)
    path = model_dir / name
    inside = None if is_blob_link(model_dir, path) else model_dir
    return read_bytes(path, limit=limit or limit_of(Path(name).name), what=what or name, inside=inside)


def model_path(model_dir: Path, name: str, *, what: str) -> Path:
    """``model_dir/name`` when it is a regular file whose links stay inside (see ``read_model_bytes``)."""
    model_dir = Path(model_dir)
    path = model_dir / name
    regular_file(path, what=what, inside=None if is_blob_link(model_dir, path) else model_dir)
    return path


def read_model_text(model_dir: Path, name: str, *, what: str | None = None, limit: int | None = None) -> str:
    data = read_model_bytes(model_dir, name, what=what, limit=limit)
    return decode_text(data, what=f"{Path(model_dir) / name}: {what or name}")


def read_model_json(model_dir: Path, name: str, *, what: str | None = None) -> Any:
    """Parsed JSON of ``model_dir/name`` (bounded size and depth); a FormatError line when it is not JSON."""
    data = read_model_bytes(model_dir, name, what=what)
    try:
        return loads_json(data, what=f"{Path(model_dir) / name}", max_depth=MODEL_JSON_DEPTH)
    except UsageError as exc:
        raise FormatError(str(exc)) from None


def inside_name(model_dir: Path, name: object, *, what: str) -> str:
    """``name`` when it is a relative path that stays in ``model_dir`` (no ``..``, not absolute)."""
    if not isinstance(name, str) or not name or "\0" in name:
        raise FormatError(f"{model_dir}: {what} {name!r} is not a file name")
    parts = Path(name).parts
    if Path(name).is_absolute() or ".." in parts or name.startswith(("/", "\\")) or "\\" in name:
        raise FormatError(f"{model_dir}: {what} {name!r} points outside the model directory; "
                          "use a file name inside it")
    return name


def check_files(model_dir: Path) -> None:
    """Refuse FIFOs, devices, sockets and symlinks leaving ``model_dir`` (Hub blob links excepted),
    and any file over its size limit in ``FILE_LIMITS``; subfolders included, ``.git`` skipped."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir}: model directory not found")
    root = model_dir.resolve()
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if ".git" in rel.parts:
            continue
        if path.is_symlink() and not is_blob_link(model_dir, path):
            real = path.resolve()
            if real != root and not real.is_relative_to(root):
                raise UnsafeInput(f"{model_dir}: {rel.as_posix()} is a link to {real}, outside the model "
                                 "directory; copy the file in")
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise UnsafeInput(f"{model_dir}: {rel.as_posix()} cannot be read ({exc.strerror})") from None
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise UnsafeInput(f"{model_dir}: {rel.as_posix()} is not a regular file (a FIFO, device or "
                             "socket); remove it")
        size, limit = path.stat().st_size, FILE_LIMITS.get(path.name)
        if limit is not None and size > limit:
            raise UnsafeInput(f"{model_dir}: {rel.as_posix()} is {size:,} bytes, over the {limit:,}-byte "
                             "limit for that file; is it the right file?")


def check_loadable(model_dir: Path) -> None:
    """Everything a loader must know before ``from_pretrained``: only regular files of sane size,
    no pickle under any name, a readable config and valid safetensors headers. One error line."""
    from merge.layout import read_layout  # layout imports this module
    from merge.pickle_scan import pickle_files

    check_files(model_dir)
    pickles = pickle_files(model_dir)
    if pickles:
        raise FormatError(f"{model_dir}: {pickles[0]} is a pickle (recognised by its content; loading it can "
                          "run code): refused before loading; convert the model to safetensors in an isolated "
                          f"environment and remove {', '.join(pickles)}")
    read_layout(model_dir)
