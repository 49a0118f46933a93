"""The root of mergeops's exception hierarchy.

Every folder (merge/, evaluation/, registry/, flows/) derives its own error types from the two
kinds below, so the CLI can map any of them to one line on stderr and an exit code:
``UsageError`` (exit 2: bad input or usage) and ``CheckFailed`` (exit 1: a check said no).
It lives in ``merge/`` because that folder may import nothing else of ours.
"""

from __future__ import annotations


def error_location(loc, skip: tuple[str, ...] = ()) -> str:
    """A validation error's location (pydantic's ``loc``) as ``a.b.0.c`` for a one-line message. A
    key from the user's file may hold a newline or other control characters: such a part is quoted
    (``repr``), so the message stays one line. Parts starting with a ``skip`` prefix are left out."""
    parts = (str(p) for p in loc)
    return ".".join(p if p.isprintable() else repr(p) for p in parts if not (skip and p.startswith(skip)))


class MergeopsError(Exception):
    """Base of every error mergeops raises on purpose; ``exit_code`` is what the CLI returns."""

    exit_code = 2


class UsageError(MergeopsError):
    """Bad input or usage: a malformed recipe, a missing file, an unknown option value."""

    exit_code = 2


class CheckFailed(MergeopsError):
    """A check said no: audit findings, a failed gate, a verify mismatch, a refused approval."""

    exit_code = 1


class UnsafeInput(UsageError):
    """A file is hostile rather than malformed: a FIFO or device, a link out of its directory, over
    its size limit, nested too deep, or YAML aliases that would expand without end."""


class RecipeError(UsageError):
    """The recipe is invalid; raised before any tensor is read."""


class CompatibilityError(UsageError):
    """Parents cannot be merged together (architecture, tensor names, shapes, tokenizer)."""


class FormatError(UsageError):
    """A checkpoint file is malformed, unsafe or truncated."""


class SourceNotFound(UsageError):
    """A model reference is neither an existing directory nor a snapshot in the local Hugging Face cache."""


class PinMismatch(UsageError):
    """A parent's content id differs from the one the recipe pins (the audited bytes changed)."""


class StaleStatistics(UsageError):
    """Calibration statistics computed from another model than the parent they are given for, or
    from that parent before it changed."""


class MergeFailed(UsageError):
    """The method cannot merge these inputs (e.g. multislerp of antipodal task vectors)."""
