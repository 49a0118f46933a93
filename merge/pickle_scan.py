"""Recognise a pickle by its bytes, whatever its file name, without ever unpickling it.

A name proves nothing: ``weights``, ``data.dat`` or ``checkpoint`` may hold a pickle, and the
unpickler runs code (``GLOBAL`` + ``REDUCE``) as it reads, before any error. So every file of a
model directory is sniffed, and the audit and every loader refuse what this module recognises:

* protocol 2-5 (and a hand-made ``PROTO 0/1``): the stream opens with ``0x80`` and a protocol byte;
* a torch zip checkpoint (``torch.save`` since 1.6): a zip archive holding ``…/data.pkl``;
* protocol 0/1 (text and early binary pickles, no opening marker): the head of the file is walked
  opcode by opcode with ``pickletools.genops``, which only parses, never executes. It is a pickle
  when it reaches ``STOP`` as a well-formed program (checked by ``pickletools.dis``), when it
  imports a global and calls it before anything malformed (an unpickler would already
  have run that code), or when a long head parses cleanly throughout.

``*.safetensors`` files are not sniffed: their first 8 bytes are a header length that may well
start with ``0x80 0x02``; they are header-validated instead and never reach a deserialiser.
"""

from __future__ import annotations

import io
import os
import pickletools
import re
import stat
import zipfile
from pathlib import Path

HEAD_BYTES = 64 * 1024  # a protocol-0 pickle shows what it is within its first opcodes
_LONG_RUN = 64  # opcodes parsed without an error over a whole 64 KiB head: not text by chance
# Opcodes that look a callable up by name (the only way from a pickle to code), and those that
# then call it. INST does both at once.
_IMPORTS = {"GLOBAL", "STACK_GLOBAL", "EXT1", "EXT2", "EXT4"}
_CALLS = {"REDUCE", "BUILD", "OBJ", "NEWOBJ", "NEWOBJ_EX"}
_DOTTED = re.compile(r"[A-Za-z_][\w.]* [A-Za-z_][\w.]*")  # "module name", as genops joins them


def looks_pickled_bytes(head: bytes, *, whole: bool) -> bool:
    """Whether ``head`` (the first bytes of a file; ``whole`` when that is the entire file) is a
    pickle stream of any protocol."""
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return True
    ops, stop, imported = 0, None, False
    stream = io.BytesIO(head)
    try:
        for opcode, arg, pos in pickletools.genops(stream):
            ops += 1
            named = opcode.name.startswith(("EXT", "STACK")) or _DOTTED.fullmatch(str(arg)) is not None
            if opcode.name == "INST" and named or imported and opcode.name in _CALLS:
                return True
            imported = imported or opcode.name in _IMPORTS and named
            if opcode.name == "STOP":
                stop = pos + 1
                break
    except (ValueError, UnicodeDecodeError, OverflowError, IndexError):
        # Ran out of head mid-program without a malformed opcode: a long pickle, cut by our read.
        return not whole and stream.tell() >= len(head) and ops >= _LONG_RUN
    if stop is None:
        return False
    try:  # a whole program: the stack and memo must add up, which text never does by accident
        pickletools.dis(head[:stop], out=io.StringIO())
    except (ValueError, UnicodeDecodeError, OverflowError, IndexError):
        return False
    return True


def looks_pickled(path: Path) -> bool:
    """Whether the regular file ``path`` holds a pickle (see the module docstring). Reads at most
    ``HEAD_BYTES`` and, for a zip, its central directory; never deserialises anything."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in must not block us
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return False
        head = fh.read(HEAD_BYTES + 1)
        if head[:4] == b"PK\x03\x04":
            try:
                with zipfile.ZipFile(fh) as zf:  # the central directory only; no member is read
                    return any(n.endswith(".pkl") for n in zf.namelist())
            except (zipfile.BadZipFile, OSError, ValueError, EOFError):
                return False
    return looks_pickled_bytes(head[:HEAD_BYTES], whole=len(head) <= HEAD_BYTES)


def pickle_files(model_dir: Path) -> list[str]:
    """Relative paths of the files under ``model_dir`` that hold a pickle, subfolders included
    (``.git`` excepted). Symlinks, FIFOs and devices are skipped here: the directory checks
    (``merge.model_dir``) and the manifest refuse them on their own."""
    model_dir = Path(model_dir)
    found = []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if ".git" in rel.parts or path.is_symlink() and not _inside(model_dir, path):
            continue
        if path.name.endswith(".safetensors") or not path.is_file():
            continue
        if looks_pickled(path):
            found.append(rel.as_posix())
    return found


def _inside(model_dir: Path, path: Path) -> bool:
    from merge.hub import is_blob_link  # a Hub snapshot's files are links into its blobs/

    real = path.resolve()
    return real.is_relative_to(model_dir.resolve()) or is_blob_link(model_dir, path)
