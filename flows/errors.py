"""Errors raised by the flows: each says which step stopped and why, in one line."""

from __future__ import annotations

from merge.errors import CheckFailed, MergeopsError, UsageError


class StoreError(MergeopsError):
    """A git or DVC call failed while versioning artifacts (exit 2: fix the store or its remote)."""

    exit_code = 2


class StepRefused(CheckFailed):
    """A pipeline step said no (the audit, a gate); nothing was registered."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}; nothing was registered")
        self.step = step
        self.reason = reason


class WatchConfigError(UsageError):
    """No recipe to watch, or a watched recipe cannot be read."""


class ConfigError(UsageError):
    """``mergeops.yaml`` (or ``$MERGEOPS_CONFIG``) cannot be read or holds an unknown setting."""


class StoreMissing(UsageError):
    """A command that reads the registry found no store where the settings point (it never creates one)."""


class PrefectUnavailable(MergeopsError):
    """Prefect's API (the local ephemeral server or PREFECT_API_URL) cannot be reached."""

    exit_code = 2


class ServerUnreachable(UsageError):
    """A configured server (MLflow, Prefect) does not answer within the time limit."""
