"""Read-only questions the flows ask the registry: which versions exist, with which parents."""

from __future__ import annotations

from registry import mlflow_registry as reg
from registry.errors import RegistryError, VersionNotFound


def versions(tracking_uri: str, name: str) -> list[reg.VersionInfo]:
    """Every version of ``name``, oldest first; empty when the model is not registered yet.

    Versions are numbered 1..n and mergeops never deletes one, so the first missing number ends
    the list. Any other registry error propagates: a store that cannot answer (say, a locked
    sqlite file) must not look like a shorter history, or a re-merge would register twice."""
    found, number = [], 1
    while True:
        try:
            found.append(reg.get_version(tracking_uri, name, number))
        except VersionNotFound:
            return found
        number += 1


def parent_ids(info: reg.VersionInfo) -> list[str]:
    return sorted(filter(None, (info.tag("parents") or "").split(",")))


def find_same(tracking_uri: str, name: str, *, recipe_sha256: str, parent_content_ids: list[str],
              merged_content_id: str | None = None) -> reg.VersionInfo | None:
    """The version already registered from this recipe and these parents (and these bytes), if any."""
    want = sorted(parent_content_ids)
    for info in reversed(versions(tracking_uri, name)):
        if info.tag("recipe_sha256") != recipe_sha256 or parent_ids(info) != want:
            continue
        if merged_content_id is None or info.tag("content_id") == merged_content_id:
            return info
    return None


def baseline(tracking_uri: str, name: str) -> reg.VersionInfo | None:
    """What a re-merge compares against: the champion, else the latest candidate, else nothing."""
    for spec in (f"{name}@champion", f"{name}@candidate"):
        try:
            return reg.resolve(tracking_uri, spec)
        except RegistryError:
            continue
    return None
