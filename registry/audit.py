"""The source-model audit: nothing unsafe, unlicensed or incompatible reaches a merge.

``audit_models`` checks each parent (format safety, integrity, licence, weight sanity), then the
set (architecture, tokenizer, ancestry, licence compatibility), and returns an ``AuditReport``
whose findings table is validated by ``registry.schemas.FINDINGS_SCHEMA``. Any error-severity
finding makes the verdict "fail". The report's ``pins()`` are the content ids the merge engine
re-hashes at read time, so the bytes that were audited are the bytes that are merged.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from merge.errors import UnsafeInput, UsageError
from merge.hub import resolve_model, snapshot_of
from merge.layout import architecture_fingerprint, tokenizer_fingerprint
from merge.manifest import FileEntry, content_id_of, file_entries
from merge.model_dir import check_files
from registry.audit_checks import check_format, check_integrity, validate_pin
from registry.audit_compat import ParentFacts, check_ancestry, check_architecture, check_tokenizer, find_base
from registry.audit_sources import declared_bases, read_card, resolve_license, resolve_revision, tool_versions
from registry.audit_weights import delta_outliers, scan_weights
from registry.errors import AuditFailed
from registry.licenses import LicensePolicy, combine, load_license_policy
from registry.schemas import SET_PARENT, Finding, findings_frame

INTENDED_USES = ("commercial", "research")


class ParentAudit(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str  # the reference as given (a recipe's model ref); pins() is keyed by it
    content_id: str | None
    license: str | None  # SPDX-style id from the policy's vocabulary
    verdict: Literal["pass", "fail"]
    resolved_path: str
    revision: str | None  # Hub snapshot or git commit; the content id when there is neither
    revision_kind: str
    repo_id: str | None = None  # "org/name" when read from a Hugging Face cache snapshot
    license_raw: str | None = None
    license_source: str | None = None
    license_link: str | None = None
    is_base: bool = False
    base_model: list[str] = []
    model_type: str | None = None
    architecture_fingerprint: str | None = None
    tokenizer_fingerprint: str | None = None
    n_tensors: int = 0
    n_parameters: int = 0
    dtypes: dict[str, int] = {}
    delta_from_base: float | None = None  # ‖θ − θ_base‖₂
    relative_delta: float | None = None  # ‖θ − θ_base‖₂ / ‖θ_base‖₂
    files: list[FileEntry] = []


class AuditReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    verdict: Literal["pass", "fail"]
    effective_license: str
    obligations: list[str]
    parents: list[ParentAudit]
    findings: list[Finding]
    intended_use: Literal["commercial", "research"]
    base: str | None
    audited_at: str  # UTC, ISO 8601
    tools: dict[str, str]
    policy_sha256: str

    def pins(self) -> dict[str, str]:
        """{model reference: content id} for every parent, to pin the merge to these bytes."""
        return {p.path: p.content_id for p in self.parents if p.content_id is not None}

    def findings_table(self) -> pd.DataFrame:
        return findings_frame(self.findings)

    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=indent, ensure_ascii=False)

    def raise_for_verdict(self) -> AuditReport:
        """Raise AuditFailed naming the first error when the verdict is "fail"; else return self."""
        errors = self.errors()
        if errors:
            first = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise AuditFailed(f"audit failed: {first.parent}: [{first.check}] {first.message}{more}")
        return self


def _resolve(ref: str, base_dir: Path | None) -> Path:
    """A directory, or ``org/name[@revision]`` from the local Hugging Face cache (SourceNotFound)."""
    return resolve_model(ref, base_dir).path


def audit_models(
    model_dirs: list[str | Path],
    *,
    intended_use: str = "research",
    policy: LicensePolicy | str | Path | None = None,
    base_dir: str | Path | None = None,
    base: str | Path | None = None,
    pins: dict[str, str] | None = None,
) -> AuditReport:
    """Audit ``model_dirs`` (relative ones resolve against ``base_dir``) as parents of one merge.

    ``base`` names the base model (added to the set if missing); without it, the parent the
    others declare as ``base_model`` is the base. ``pins`` maps a reference to the content id
    (or revision) it must have. Raises UsageError on bad input; problems with a parent are
    findings, never exceptions.
    """
    if intended_use not in INTENDED_USES:
        raise UsageError(f"intended_use must be one of {', '.join(INTENDED_USES)}, not {intended_use!r}")
    if not isinstance(policy, LicensePolicy):
        policy = load_license_policy(policy)
    refs = [str(d) for d in model_dirs]
    if not refs:
        raise UsageError("no model directories to audit")
    base_dir = Path(base_dir) if base_dir is not None else None
    paths = {ref: _resolve(ref, base_dir) for ref in refs}
    if len({p.resolve() for p in paths.values()}) != len(refs):
        raise UsageError("the same model directory is listed twice")
    base_ref = None
    if base is not None:  # the base is a parent too: audited like the others
        where = _resolve(str(base), base_dir).resolve()
        base_ref = next((r for r in refs if paths[r].resolve() == where), None)
        if base_ref is None:
            base_ref = str(base)
            refs.append(base_ref)
            paths[base_ref] = _resolve(base_ref, base_dir)
    pin_of: dict[str, str] = {}
    for key, value in (pins or {}).items():
        match = [r for r in refs if r == key or paths[r].resolve() == _resolve_quiet(key, base_dir)]
        if not match:
            raise UsageError(f"pin for {key!r} names no audited model directory")
        pin_of[match[0]] = validate_pin(key, value)

    findings: list[Finding] = []
    facts: list[ParentFacts] = []
    rows: dict[str, dict] = {}
    licenses: list[tuple[str, str | None]] = []
    for ref in refs:
        rows[ref], fact, parent_findings, lid = _audit_one(ref, paths[ref], policy, pin_of.get(ref))
        facts.append(fact)
        licenses.append((ref, lid))
        findings += parent_findings

    base_ref = find_base(facts, base_ref)
    findings += check_architecture(facts, base_ref)
    findings += check_tokenizer(facts, base_ref)
    findings += check_ancestry(facts, base_ref, policy.different_base)
    findings += _weights(facts, base_ref, policy, findings, rows)
    outcome = combine(licenses, policy, intended_use)
    findings += outcome.findings

    failed = {f.parent for f in findings if f.severity == "error"}
    parents = [
        ParentAudit(**rows[ref], verdict="fail" if ref in failed or SET_PARENT in failed else "pass",
                    is_base=ref == base_ref)
        for ref in refs
    ]
    report = AuditReport(
        verdict="fail" if failed else "pass",
        effective_license=outcome.effective_license,
        obligations=list(outcome.obligations),
        parents=parents,
        findings=findings,
        intended_use=intended_use,
        base=base_ref,
        audited_at=datetime.now(UTC).isoformat(timespec="seconds"),
        tools=tool_versions(),
        policy_sha256=policy.sha256,
    )
    report.findings_table()  # the pandera schema is the contract for the findings table
    return report


def _resolve_quiet(ref: str, base_dir: Path | None) -> Path | None:
    try:
        return _resolve(ref, base_dir).resolve()
    except UsageError:
        return None


def _audit_one(
    ref: str, path: Path, policy: LicensePolicy, pin: str | None
) -> tuple[dict, ParentFacts, list[Finding], str | None]:
    """Header-level checks of one parent: (row fields, facts for set checks, findings, licence)."""
    findings: list[Finding] = []
    try:
        check_files(path)  # FIFOs, devices, links out, oversized side files: before anything reads them
        entries = file_entries(path)
        cid = content_id_of(entries)
    except UnsafeInput as exc:
        entries, cid = [], None
        findings.append(Finding(parent=ref, check="format.file", severity="error", message=str(exc)))
    except UsageError as exc:  # e.g. a symlink: the manifest cannot vouch for bytes outside the dir
        entries, cid = [], None
        findings.append(Finding(parent=ref, check="integrity.manifest", severity="error", message=str(exc)))
    revision, revision_kind = resolve_revision(path, cid)
    if cid is not None:
        findings += check_integrity(path, ref, entries, cid, revision, pin)
    layout, format_findings = check_format(path, ref)
    findings += format_findings
    card, card_findings = read_card(path, ref)
    findings += card_findings
    info, license_findings = resolve_license(path, card, ref, policy)
    findings += license_findings
    hub = snapshot_of(path)
    fact = ParentFacts(
        ref=ref, path=path, repo_id=hub[0] if hub else None, declared_bases=declared_bases(card), layout=layout,
        architecture=architecture_fingerprint(layout) if layout is not None else None,
        tokenizer=_tokenizer(path, ref, findings),
    )
    row = dict(
        path=ref, content_id=cid, license=info.license, resolved_path=str(path.resolve()),
        revision=revision, revision_kind=revision_kind, repo_id=fact.repo_id, license_raw=info.raw,
        license_source=info.source, license_link=info.link, base_model=fact.declared_bases,
        model_type=layout.model_type if layout is not None else None,
        architecture_fingerprint=fact.architecture, tokenizer_fingerprint=fact.tokenizer, files=entries,
    )
    return row, fact, findings, info.license


def _tokenizer(path: Path, ref: str, findings: list[Finding]) -> str | None:
    try:
        return tokenizer_fingerprint(path)
    except UsageError as exc:  # FormatError: tokenizer.json is not JSON
        findings.append(Finding(parent=ref, check="format.tokenizer", severity="error", message=str(exc)))
        return None


def _weights(facts: list[ParentFacts], base_ref: str | None, policy: LicensePolicy,
             findings: list[Finding], rows: dict[str, dict]) -> list[Finding]:
    """Stream every readable parent once; the base's distance to each sibling on the way."""
    broken = {f.parent for f in findings if f.check == "compat.architecture"}
    base_fact = next((f for f in facts if f.ref == base_ref and f.layout is not None), None)
    out: list[Finding] = []
    deltas: dict[str, float] = {}
    for fact in facts:
        if fact.layout is None:
            continue
        against = base_fact.layout if base_fact is not None and fact is not base_fact and fact.ref not in broken else None
        scan = scan_weights(fact.layout, fact.ref, policy.weights, against)
        out += scan.findings
        rows[fact.ref].update(n_tensors=scan.n_tensors, n_parameters=scan.n_parameters, dtypes=scan.dtypes)
        if scan.delta_norm is not None:
            deltas[fact.ref] = scan.delta_norm
            relative = scan.delta_norm / scan.base_norm if scan.base_norm else None
            rows[fact.ref].update(delta_from_base=scan.delta_norm, relative_delta=relative)
    if base_fact is not None:
        out += delta_outliers(deltas, base_fact.ref, policy.weights)
    return out
