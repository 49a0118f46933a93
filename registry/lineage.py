"""The lineage record: everything an auditor needs to replay a merged model bit for bit.

One pydantic model with a versioned schema (``schema_version``), stored as ``lineage.json`` next to
the model in MLflow; its key facts are also model-version tags so they can be searched. The bytes
of ``lineage.json`` are the canonical JSON of the record, so a record survives a round trip
byte for byte and can be hashed.

``build_lineage`` fills the record from plain inputs (the audit report, the merge manifest and the
evaluation report as dicts or pydantic models) so the pipeline need not know this schema.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from merge.bounded import last_mapping
from merge.hub import snapshot_of
from merge.manifest import FileEntry, canonical_json
from registry.errors import LineageError

SCHEMA_VERSION = 1
# Packages whose versions change what a merge or an evaluation produces.
_KEY_PACKAGES = ("torch", "safetensors", "transformers", "lm-eval", "mlflow", "numpy", "pydantic")
# Leakage verdicts that mean "nothing leaked"; anything else counts as a failure. `not_checked`
# (a parent's card declares no training data) is not a leak: whether it may pass is the gate
# policy's decision (leakage.require_contamination_check), recorded in the gate verdict.
_CLEAN_VERDICTS = {"pass", "ok", "clean", "none", "not_checked"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParentRecord(_Frozen):
    reference: str  # as written in the recipe (a path or a hub id)
    resolved_revision: str | None = None  # a hub commit, a DVC rev, or None for a local dir
    path: str  # where the bytes were read from (absolute)
    content_id: str
    license: str | None = None
    audit_verdict: str = "unknown"
    # Added in schema 1 without a version bump (optional; older records read as None): the
    # Hugging Face repo and commit of a parent read from a Hub cache snapshot.
    repo_id: str | None = None
    commit: str | None = None


class RecipeRecord(_Frozen):
    text: str  # the full recipe, byte for byte
    sha256: str
    base_dir: str  # relative model references in ``text`` resolve against this
    method: str | None = None
    name: str | None = None


class CodeVersion(_Frozen):
    git_sha: str | None = None
    git_dirty: bool = False
    mergeops: str | None = None
    packages: dict[str, str] = Field(default_factory=dict)


class DvcRecord(_Frozen):
    revision: str | None = None
    md5s: dict[str, str] = Field(default_factory=dict)  # dvc.lock out path -> md5


class EvaluationSummary(_Frozen):
    digest: str | None = None
    scores: dict[str, float] = Field(default_factory=dict)  # domain -> merged model's score
    retention: dict[str, float] = Field(default_factory=dict)
    normalized_average: float | None = None
    metrics: dict[str, str] = Field(default_factory=dict)  # domain -> the primary metric its score is


class LeakageResult(_Frozen):
    check: str
    model: str
    value: float | None = None
    threshold: float | None = None
    verdict: str
    detail: dict[str, Any] = Field(default_factory=dict)  # e.g. {"eval_domain": "sort", "ngram": 13}


class GateRecord(_Frozen):
    gate: str
    observed: float | str | None = None
    threshold: float | str | None = None
    passed: bool
    reason: str = ""


class ApprovalRecord(_Frozen):
    decision: Literal["approved", "rejected"]
    reviewer: str
    at: str
    comment: str = ""
    authenticated: bool = False


class AuditSummary(_Frozen):
    verdict: str
    effective_license: str | None = None
    obligations: list[str] = Field(default_factory=list)


class SettingsRecord(_Frozen):
    """The suite or gate policy a version was judged by (evaluation/provenance.py ``SettingsFile``)."""

    name: str
    source: str  # the file it was read from, or "shipped with mergeops"
    text: str
    sha256: str  # of ``text``
    digest: str  # suite: hash of task configs and data files; policy: sha256 of the effective policy


class MergedRecord(_Frozen):
    content_id: str
    files: list[FileEntry]


class LineageRecord(_Frozen):
    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    created_at: str
    requested_by: str
    parents: list[ParentRecord]
    recipe: RecipeRecord
    seed: int | None = None
    code: CodeVersion = CodeVersion()
    dvc: DvcRecord = DvcRecord()
    audit: AuditSummary
    evaluation: EvaluationSummary = EvaluationSummary()
    leakage: list[LeakageResult] = Field(default_factory=list)
    gates: list[GateRecord] = Field(default_factory=list)
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    merged: MergedRecord
    # The calibration statistics files a regmean / fisher merge solved with (path, sha256, size):
    # inputs of the merge beside its parents, which a replay must read unchanged.
    statistics: list[FileEntry] = Field(default_factory=list)
    suite: SettingsRecord | None = None
    policy: SettingsRecord | None = None
    # The model card, LICENSE and NOTICE registered beside the weights: written from this record,
    # so outside the merged content id (which a replay reproduces), and checked by their own hashes.
    release_files: list[FileEntry] = Field(default_factory=list)

    @property
    def gate_verdict(self) -> str:
        """``pass`` only when every gate passed and the audit passed; ``fail`` otherwise."""
        ok = all(g.passed for g in self.gates) and self.audit.verdict == "pass"
        return "pass" if ok else "fail"

    @property
    def leakage_verdict(self) -> str:
        return "pass" if all(r.verdict.lower() in _CLEAN_VERDICTS for r in self.leakage) else "fail"

    def to_json_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no whitespace): the bytes stored and hashed."""
        return canonical_json(self.model_dump(mode="json"))

    @classmethod
    def from_json_bytes(cls, data: bytes | str) -> LineageRecord:
        try:
            raw = json.loads(data)
        except json.JSONDecodeError as exc:
            raise LineageError(f"lineage.json is not valid JSON ({exc}); re-register the version") from exc
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if version != SCHEMA_VERSION:
            raise LineageError(
                f"lineage schema_version {version!r} is not supported (this mergeops reads {SCHEMA_VERSION})"
            )
        return cls.model_validate(raw)


def _plain(obj: Any) -> Any:
    """Accept a pydantic model, an object with ``to_json()``, a JSON string or a dict."""
    if obj is None or isinstance(obj, dict | list):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "to_json"):
        obj = obj.to_json()
        if isinstance(obj, dict):
            return obj
    if isinstance(obj, bytes | str):
        return json.loads(obj)
    raise LineageError(f"cannot read {type(obj).__name__} as a report; pass a dict or a pydantic model")


def code_version(repo_dir: Path | None = None) -> CodeVersion:
    """The git revision of ``repo_dir`` (if it is a checkout) and the installed package versions."""
    sha, dirty = None, False
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, check=True).stdout
        dirty = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    packages = {}
    for name in _KEY_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        own = metadata.version("mergeops")
    except metadata.PackageNotFoundError:
        own = None
    return CodeVersion(git_sha=sha, git_dirty=dirty, mergeops=own, packages=packages)


def build_lineage(
    *,
    name: str,
    recipe_text: str,
    recipe_sha256: str,
    recipe_base_dir: Path,
    merge_manifest: dict | Any,
    audit_report: dict | Any,
    requested_by: str,
    evaluation_report: dict | Any | None = None,
    references: dict[str, str] | None = None,
    revisions: dict[str, str] | None = None,
    seed: int | None = None,
    dvc_revision: str | None = None,
    dvc_md5s: dict[str, str] | None = None,
    code: CodeVersion | None = None,
    suite: dict | Any | None = None,
    policy: dict | Any | None = None,
) -> LineageRecord:
    """Assemble a record from the pipeline's reports.

    ``merge_manifest`` is ``<out>/mergeops.manifest.json`` as a dict; ``audit_report`` and
    ``evaluation_report`` use the ``--json`` keys of DESIGN.md. A manifest parent may carry
    ``ref`` (as ``MergeResult.parents`` do: pass ``{**result.manifest, "parents": result.parents}``);
    otherwise ``references`` maps a parent's path to the reference written in the recipe.
    ``revisions`` maps a parent's path to a resolved revision (hub commit, DVC rev). A parent read
    from a Hugging Face cache snapshot records its repo id and commit, taken from the snapshot's path.
    """
    manifest, audit, evaluation = _plain(merge_manifest), _plain(audit_report), _plain(evaluation_report) or {}
    references, revisions = references or {}, revisions or {}
    audited = {p["content_id"]: p for p in audit.get("parents", [])}
    parents = []
    for parent in manifest["parents"]:
        found = audited.get(parent["content_id"], {})
        path = str(parent["path"])
        repo_id, commit = snapshot_of(Path(path)) or (None, None)  # a Hub snapshot's dir says which
        parents.append(ParentRecord(
            reference=parent.get("ref") or references.get(path, path), path=path,
            resolved_revision=revisions.get(path) or commit, repo_id=repo_id, commit=commit,
            content_id=parent["content_id"], license=found.get("license"),
            audit_verdict=found.get("verdict", "not audited"),
        ))
    parsed = last_mapping(recipe_text, what="recipe")  # a multi-stage recipe's last stage is its output
    merged_id = manifest["content_id"]
    primary = {d: p.get("metric") for d, p in (evaluation.get("primary") or {}).items()}
    scores = evaluation.get("merged_scores") or {
        r["domain"]: r["value"] for r in evaluation.get("results", [])
        if (r.get("content_id") == merged_id or r.get("role") == "merged")
        and primary.get(r["domain"], r.get("metric")) == r.get("metric")
    }
    return LineageRecord(
        name=name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        requested_by=requested_by,
        parents=parents,
        recipe=RecipeRecord(text=recipe_text, sha256=recipe_sha256, base_dir=str(Path(recipe_base_dir).resolve()),
                            method=parsed.get("merge_method"), name=parsed.get("name")),
        seed=seed if seed is not None else parsed.get("seed"),
        code=code or code_version(),
        dvc=DvcRecord(revision=dvc_revision, md5s=dvc_md5s or {}),
        audit=AuditSummary(verdict=audit["verdict"], effective_license=audit.get("effective_license"),
                           obligations=[str(o) for o in audit.get("obligations", [])]),
        evaluation=EvaluationSummary(
            digest=evaluation.get("digest"), scores={d: float(v) for d, v in scores.items() if v is not None},
            # retention is undefined (None) where every parent scored 0; keep numbers only
            retention={d: float(v) for d, v in (evaluation.get("retention") or {}).items() if v is not None},
            normalized_average=evaluation.get("normalized_average"),
            metrics={d: m for d, m in primary.items() if m},
        ),
        leakage=[LeakageResult(**{k: r.get(k) for k in ("check", "model", "value", "threshold", "verdict")},
                               detail=r.get("detail") or {}) for r in evaluation.get("leakage", [])],
        gates=[GateRecord(**{k: g.get(k) for k in ("gate", "observed", "threshold", "passed")},
                          reason=g.get("reason") or "") for g in evaluation.get("gates", [])],
        merged=MergedRecord(content_id=merged_id, files=[FileEntry(**f) for f in manifest["files"]]),
        statistics=[FileEntry(**f) for f in manifest.get("statistics", [])],
        suite=SettingsRecord(**_plain(suite)) if suite is not None else None,
        policy=SettingsRecord(**_plain(policy)) if policy is not None else None,
    )
