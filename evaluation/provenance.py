"""Which suite and which gate policy judged a model: their text, where it came from and its hash.

The pipeline reads both before it audits or merges anything, so a bad suite or policy file fails in
a second, not after the merge; the registered version carries both (artifacts, tags and lineage),
so a policy that lowered a retention bar shows as a different file with a different hash, not only
as different thresholds.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from evaluation.errors import PolicyError
from evaluation.gates import load_gate_policy
from evaluation.suite_file import read_suite_text
from evaluation.suites import load_suite, materialize
from merge.bounded import read_text
from merge.errors import UsageError
from merge.manifest import canonical_json

SHIPPED = "shipped with mergeops"


class SettingsFile(BaseModel):
    """A suite or policy as the run used it; ``digest`` is what decides results beyond the text (the
    suite hash over task configs and data files, or the sha256 of the effective policy)."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str  # the file it was read from, or SHIPPED
    text: str
    sha256: str
    digest: str


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def suite_settings(suite: str | Path, *, zoo_dir: Path | None, cache_dir: Path) -> SettingsFile:
    """Load and materialise ``suite`` (a shipped name or a file); raises SuiteError when it is bad or
    asks for zoo domains without a zoo."""
    loaded, base_dir = load_suite(suite)
    materialized = materialize(loaded, zoo_dir=zoo_dir, cache_dir=Path(cache_dir), base_dir=base_dir)
    if base_dir is None:  # a shipped suite: its entry, as a suite file of its own would say it
        text = yaml.safe_dump(loaded.model_dump(mode="json", exclude_defaults=True), sort_keys=True)
        source = SHIPPED
    else:
        source = str(Path(suite).resolve())
        text = read_suite_text(Path(suite))
    return SettingsFile(name=loaded.name, source=source, text=text, sha256=_sha256(text),
                        digest=materialized.suite_hash)


def policy_settings(policy: str | Path | None) -> SettingsFile:
    """The gate policy file (None or "default": the shipped one); raises PolicyError when it is bad."""
    shipped = policy is None or str(policy) == "default"
    effective = load_gate_policy(None if shipped else policy)
    if shipped:
        text, source = resources.files("evaluation").joinpath("gate_policy.yaml").read_text(encoding="utf-8"), SHIPPED
    else:
        try:
            text, source = read_text(policy, what="gate policy"), str(Path(policy).resolve())
        except UsageError as exc:
            raise PolicyError(str(exc)) from None
    digest = hashlib.sha256(canonical_json(json.loads(effective.model_dump_json()))).hexdigest()
    return SettingsFile(name="default" if shipped else Path(policy).name, source=source, text=text,
                        sha256=_sha256(text), digest=digest)
