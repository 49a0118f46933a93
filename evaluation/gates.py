"""Gate policy as code: a YAML policy and a pure function from evidence to decisions.

``decide`` reads plain values (scores, retention, leakage records, verdicts), touches no file and no
model, and returns one ``GateDecision`` per gate, each with a reason naming the domain or check,
the observed value and the threshold. Missing evidence fails its gate (a gate cannot be bypassed by
leaving something out), except the champion comparison, which has nothing to regress against
before the first promotion.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from evaluation.errors import PolicyError
from merge.bounded import load_yaml, read_text
from merge.errors import UsageError, error_location
from evaluation.leakage import LeakagePolicy, LeakageRecord


class ApprovalPolicy(BaseModel):
    """Who may decide a version (registry/approvals.py checks it on every decision)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reviewers: list[str] = []  # user ids; empty: anyone but the requester
    require_authentication: bool | None = None  # None: true when the recipe's intended_use is commercial

    def needs_authentication(self, intended_use: str | None) -> bool:
        if self.require_authentication is None:
            return intended_use == "commercial"
        return self.require_authentication


class GatePolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    domain_minimums: dict[str, float | None] = {"default": 0.0}
    retention_minimums: dict[str, float | None] = {"default": 0.8}
    champion_tolerance: float | None = 0.02
    leakage: LeakagePolicy = LeakagePolicy()
    require_audit_pass: bool = True
    require_license_pass: bool = True
    approval: ApprovalPolicy = ApprovalPolicy()

    def minimum(self, table: str, domain: str) -> float | None:
        values = getattr(self, table)
        return values.get(domain, values.get("default"))


class GateDecision(BaseModel):
    model_config = ConfigDict(frozen=True)

    gate: str
    observed: float | str | None
    threshold: float | str | None
    passed: bool
    reason: str


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _default_doc() -> dict:
    return yaml.safe_load(resources.files("evaluation").joinpath("gate_policy.yaml").read_text(encoding="utf-8"))


def parse_gate_policy(doc: dict | None, source: str = "policy") -> GatePolicy:
    """The shipped default with ``doc`` laid over it (an override names only what it changes)."""
    if doc is not None and not isinstance(doc, dict):
        raise PolicyError(f"{source}: a gate policy is a mapping (see evaluation/gate_policy.yaml)")
    try:
        return GatePolicy.model_validate(_deep_merge(_default_doc(), doc or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise PolicyError(f"{source}: {error_location(err['loc'])}: {err['msg']}") from None


def load_gate_policy(path: str | Path | None = None) -> GatePolicy:
    """The shipped default policy, or the file at ``path`` laid over it."""
    if path is None:
        return parse_gate_policy(None, "evaluation/gate_policy.yaml")
    path = Path(path)
    try:  # bounded: a regular file, strict UTF-8, YAML whose aliases cannot explode
        doc = load_yaml(read_text(path, what="gate policy"), what=str(path))
    except UsageError as exc:
        raise PolicyError(str(exc)) from None
    return parse_gate_policy(doc, str(path))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _at_least(gate: str, what: str, observed: float | None, minimum: float) -> GateDecision:
    if observed is None:
        return GateDecision(gate=gate, observed=None, threshold=minimum, passed=False,
                            reason=f"{what}: no value measured (minimum {_fmt(minimum)})")
    ok = observed >= minimum
    return GateDecision(gate=gate, observed=observed, threshold=minimum, passed=ok,
                        reason=f"{what} {_fmt(observed)} {'>=' if ok else '<'} minimum {_fmt(minimum)}")


def _at_most(gate: str, what: str, observed: float, maximum: float) -> GateDecision:
    ok = observed <= maximum
    return GateDecision(gate=gate, observed=observed, threshold=maximum, passed=ok,
                        reason=f"{what} {_fmt(observed)} {'<=' if ok else '>'} maximum {_fmt(maximum)}")


def _verdict(gate: str, what: str, verdict: str | None, hint: str) -> GateDecision:
    if verdict is None:
        return GateDecision(gate=gate, observed=None, threshold="pass", passed=False,
                            reason=f"no {what} verdict supplied ({hint}); required 'pass'")
    ok = verdict == "pass"
    return GateDecision(gate=gate, observed=verdict, threshold="pass", passed=ok,
                        reason=f"{what} verdict {verdict!r}{'' if ok else ', required'} 'pass'")


def _worst_at_most(gate: str, records: list[LeakageRecord], maximum: float, what: Callable[[LeakageRecord], str],
                   nothing_checked: str) -> GateDecision:
    """The record with the largest value against ``maximum``; a pass saying ``nothing_checked`` if none."""
    if not records:
        return GateDecision(gate=gate, observed=None, threshold=maximum, passed=True, reason=nothing_checked)
    worst = max(records, key=lambda r: r.value)
    return _at_most(gate, what(worst), worst.value, maximum)


def _leakage_gates(policy: LeakagePolicy, records: list[LeakageRecord], candidate: str) -> list[GateDecision]:
    own = [r for r in records if r.model == candidate]
    out = []
    if policy.canary_exposure_max is not None:
        out.append(_worst_at_most(
            "leakage:canary_exposure", [r for r in own if r.check == "canary_exposure"], policy.canary_exposure_max,
            lambda worst: f"{candidate} canary {worst.detail.get('canary')} exposure (bits)",
            f"no canary declared for {candidate} or its parents"))
    if policy.greedy_canary_forbidden:
        emitted = [r for r in own if r.check == "canary_greedy" and r.value > 0]
        n = len([r for r in own if r.check == "canary_greedy"])
        out.append(GateDecision(
            gate="leakage:canary_greedy", observed=float(len(emitted)), threshold=0.0, passed=not emitted,
            reason=(f"{candidate} greedily emits {len(emitted)} of {n} canaries "
                    f"({', '.join(str(r.detail.get('canary')) for r in emitted)}); maximum 0") if emitted
            else f"{candidate} greedily emits none of {n} canaries; maximum 0"))
    if policy.pii_max is not None:
        pii = [r for r in own if r.check == "pii"]
        if pii:
            out.append(_at_most("leakage:pii", f"{candidate} sampled generations with PII-like strings",
                                max(r.value for r in pii), float(policy.pii_max)))
        else:
            out.append(GateDecision(gate="leakage:pii", observed=None, threshold=float(policy.pii_max), passed=False,
                                    reason=f"no PII check recorded for {candidate}; maximum {policy.pii_max}"))
    out += _contamination_gates(policy, records)
    return out


def _contamination_gates(policy: LeakagePolicy, records: list[LeakageRecord]) -> list[GateDecision]:
    """Measured overlap against the maximum; a declared training file that no longer matches its
    manifest fails; ``not_checked`` models fail only when the policy requires the check."""
    contamination = [r for r in records if r.check == "contamination"]
    measured = [r for r in contamination if r.verdict != "not_checked" and r.value is not None]
    unchecked = sorted({r.model for r in contamination if r.verdict == "not_checked"})
    broken = [r for r in records if r.check == "training_data" and r.verdict == "fail"]
    note = f"; not checked: {', '.join(unchecked)}" if unchecked else ""
    out = []
    if policy.contamination_max is not None:
        if broken:
            first = broken[0]
            out.append(GateDecision(
                gate="leakage:contamination", observed=None, threshold=policy.contamination_max, passed=False,
                reason=f"{len(broken)} declared training file(s) unusable, first {first.model}'s "
                       f"{first.detail.get('path')}: {first.detail.get('reason')}; fix the model card's manifest"))
        else:
            decision = _worst_at_most(
                "leakage:contamination", measured, policy.contamination_max,
                lambda worst: (f"{worst.model} training data overlapping eval domain "
                               f"{worst.detail.get('eval_domain')} (share)"),
                "no evaluated model declares training data")
            out.append(decision.model_copy(update={"reason": decision.reason + note}))
    if policy.require_contamination_check:
        out.append(GateDecision(
            gate="leakage:contamination_checked", observed=float(len(unchecked)), threshold=0.0, passed=not unchecked,
            reason=(f"contamination not checked for {', '.join(unchecked)}: declare its training data in the model "
                    "card (`training_data:` manifest with sha256, or local `datasets:`), or set "
                    "leakage.require_contamination_check: false") if unchecked
            else "contamination checked for every model that needs it"))
    return out


def decide(
    policy: GatePolicy,
    *,
    candidate: str,
    scores: dict[str, float],
    retention: dict[str, float | None] | None = None,
    leakage: Iterable[LeakageRecord | dict[str, Any]] = (),
    audit_verdict: str | None = None,
    license_verdict: str | None = None,
    champion_scores: dict[str, float] | None = None,
    metric: str = "exact_match",
) -> list[GateDecision]:
    """Every gate of ``policy`` over the candidate's evidence. ``scores``: the candidate's primary
    metric per domain; ``retention``: candidate / best parent per domain ({} or None: no parents)."""
    records = [r if isinstance(r, LeakageRecord) else LeakageRecord.model_validate(r) for r in leakage]
    out: list[GateDecision] = []
    for domain in sorted(scores):
        minimum = policy.minimum("domain_minimums", domain)
        if minimum is not None:
            out.append(_at_least(f"domain_minimum:{domain}", f"{domain} {metric} of {candidate}", scores[domain], minimum))
    if any(v is not None for v in policy.retention_minimums.values()):
        if not retention:
            out.append(GateDecision(gate="retention", observed=None, threshold=policy.minimum("retention_minimums", ""),
                                    passed=False, reason="no parent evaluated, so retention cannot be measured; "
                                    "evaluate the merged model with its parents"))
        for domain in sorted(retention or {}):
            minimum = policy.minimum("retention_minimums", domain)
            value = retention[domain]
            if minimum is None:
                continue
            if value is None:
                out.append(GateDecision(gate=f"retention:{domain}", observed=None, threshold=minimum, passed=True,
                                        reason=f"every parent scores 0 on {domain}: nothing to retain"))
            else:
                out.append(_at_least(f"retention:{domain}", f"{domain} retention (merged / best parent)", value, minimum))
    if policy.champion_tolerance is not None:
        if champion_scores is None:
            out.append(GateDecision(gate="champion_regression", observed=None, threshold=-policy.champion_tolerance,
                                    passed=True, reason="no champion yet: nothing to regress against"))
        for domain in sorted(champion_scores or {}):
            delta = None if domain not in scores else scores[domain] - champion_scores[domain]
            out.append(_at_least(f"champion_regression:{domain}",
                                 f"{domain} {metric} change vs champion ({_fmt(champion_scores[domain])})",
                                 delta, -policy.champion_tolerance))
    out += _leakage_gates(policy.leakage, records, candidate)
    if policy.require_audit_pass:
        out.append(_verdict("audit", "audit", audit_verdict, "run `mergeops audit` on the parents"))
    if policy.require_license_pass:
        out.append(_verdict("license", "licence", license_verdict, "the audit's licence check decides it"))
    return out


def score_floors(gates: Iterable[GateDecision | dict], scores: dict[str, dict[str, float | None]],
                 merged: str) -> dict[str, list[tuple[str, float]]]:
    """The lowest merged score each per-domain gate admits, for drawing: ``{domain: [(gate, score)]}``.

    ``scores``: {domain: {model: score}}. A minimum is absolute; a retention bar is a share of the
    best parent's score; a champion bar is the champion's score minus the tolerance."""
    out: dict[str, list[tuple[str, float]]] = {}
    for g in gates:
        g = g if isinstance(g, GateDecision) else GateDecision.model_validate(g)
        kind, _, domain = g.gate.partition(":")
        if domain not in scores or not isinstance(g.threshold, (int, float)):
            continue
        row = scores[domain]
        if kind == "domain_minimum":
            floor = g.threshold
        elif kind == "retention":
            parents = [v for m, v in row.items() if m != merged and v is not None]
            if not parents:
                continue
            floor = g.threshold * max(parents)
        elif kind == "champion_regression" and isinstance(g.observed, (int, float)) and row.get(merged) is not None:
            floor = row[merged] - g.observed + g.threshold  # champion score - tolerance
        else:
            continue
        out.setdefault(domain, []).append((kind, float(floor)))
    return out
