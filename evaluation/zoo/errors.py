"""Errors of the demo zoo builder."""

from __future__ import annotations

from merge.errors import UsageError


class ZooUsageError(UsageError):
    """Bad input to ``mergeops zoo build``: an unknown profile, an unwritable or occupied output dir."""
