"""Errors raised by evaluation/: bad suites and policies (exit 2), results that fail their schema and
gates that say no (exit 1)."""

from __future__ import annotations

from merge.errors import CheckFailed, UsageError


class SuiteError(UsageError):
    """A suite is unknown or malformed, or the data it points at is missing."""


class PolicyError(UsageError):
    """A gate policy file is malformed or names an unknown setting."""


class DataFileError(UsageError):
    """A local data file (JSONL, CSV, Parquet) is missing, unreadable or lacks a named column."""


class ZooIndexError(UsageError):
    """A directory given as a zoo has no valid ``zoo.json``."""


class ModelLoadError(UsageError):
    """A model directory cannot be loaded for evaluation (missing tokenizer, pickle-only weights...)."""


class ResultsInvalid(CheckFailed):
    """A results table broke its schema: a missing domain, a truncated sample count, a bad value."""


class GateFailed(CheckFailed):
    """At least one gate of the policy said no."""
