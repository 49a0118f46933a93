"""Errors raised by registry/ (audit, licences, lineage, MLflow registry, approvals, audit log).

Every type derives from ``UsageError`` (exit 2: bad input) or ``CheckFailed`` (exit 1: a check
said no), so the CLI maps each to one line and an exit code.
"""

from __future__ import annotations

from merge.errors import CheckFailed, UsageError


class RegistryError(UsageError):
    """The registry cannot do what was asked: unknown model, version or alias, unreachable store."""


class VersionNotFound(RegistryError):
    """The registry answered, and has no such model or version."""


class LineageError(UsageError):
    """A lineage record is missing, malformed, or of an unsupported schema version."""


class ApprovalRefused(CheckFailed):
    """An approval, rejection or promotion was refused by a governance rule (four-eyes, gates, state)."""


class ArtifactMismatch(CheckFailed):
    """Stored artifacts no longer match their manifest (edited, missing or extra files)."""


class SignatureInvalid(ArtifactMismatch):
    """A model's signature is missing, malformed, made with another key, or no longer matches its files."""


class AuditLogTampered(CheckFailed):
    """The audit log's hash chain is broken: an entry was edited, deleted or reordered."""


class VerifyMismatch(CheckFailed):
    """Re-running a merge from its lineage did not reproduce the registered weights or parents."""


class ParentUnavailable(VerifyMismatch):
    """The artifact store holds no copy of a parent's recorded bytes (not versioned, or neither its
    cache nor its remote has them)."""


class AuditFailed(CheckFailed):
    """A source-model audit found an error-severity problem: these parents must not be merged."""


class PolicyError(UsageError):
    """A licence/audit policy file is missing, malformed or inconsistent."""


class SigningKeyError(RegistryError):
    """A signing or public key is missing, unreadable or of the wrong kind."""
