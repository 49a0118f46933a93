"""Licences: normalise what model cards say to SPDX-style ids, and apply the licence policy.

The policy (``license_policy.yaml`` shipped next to this file, overridable) holds each licence's
category, whether it allows commercial use and derivatives, its obligations, a category ×
category compatibility matrix, and the audit's severities. ``combine`` turns the parents'
licences into the merged model's effective licence (an SPDX-style ``AND`` of every distinct
licence, strictest first: a merge is bound by all of them) and the obligations it inherits.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from merge.bounded import decode_text, load_yaml, read_bytes
from merge.errors import UsageError, error_location
from registry.errors import PolicyError
from registry.schemas import Finding

DEFAULT_POLICY_PATH = Path(__file__).with_name("license_policy.yaml")
Outcome = Literal["ok", "review", "refuse"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LicenseTerms(_Frozen):
    name: str
    category: str
    commercial: bool = True
    derivatives: bool = True  # False: a merge (a derivative) is not allowed at all
    obligations: tuple[str, ...] = ()
    # Each signature is a set of phrases that must all appear in a LICENSE file's text.
    signatures: tuple[tuple[str, ...], ...] = ()


class WeightPolicy(_Frozen):
    allowed_dtypes: tuple[str, ...] = ("F32", "F16", "BF16")
    unexpected_dtype: Literal["info", "warning", "error"] = "warning"
    zero_matrix: Literal["info", "warning", "error"] = "error"
    zero_vector: Literal["info", "warning", "error"] = "info"
    delta_ratio_limit: float = 100.0


class LicensePolicy(_Frozen):
    schema_version: Literal[1]
    unknown_license: Literal["refuse", "review"] = "refuse"
    missing_license: Literal["refuse", "review"] = "refuse"
    different_base: Literal["warning", "error"] = "warning"
    # Licence ids not in `licenses` that go to review (a warning) even when unknown_license is refuse.
    review_licenses: tuple[str, ...] = ()
    weights: WeightPolicy = WeightPolicy()
    categories: tuple[str, ...]
    matrix: dict[str, tuple[Outcome, ...]]
    licenses: dict[str, LicenseTerms]
    aliases: dict[str, str] = {}
    sha256: str = ""  # of the policy file's bytes, for the lineage

    @model_validator(mode="after")
    def _consistent(self) -> LicensePolicy:
        cats = self.categories
        if set(self.matrix) != set(cats) or any(len(row) != len(cats) for row in self.matrix.values()):
            raise ValueError(f"matrix must have one row of {len(cats)} entries per category {list(cats)}")
        for i, a in enumerate(cats):
            for j, b in enumerate(cats):
                if self.matrix[a][j] != self.matrix[b][i]:
                    raise ValueError(f"matrix is not symmetric: {a}/{b} is {self.matrix[a][j]}, {b}/{a} is {self.matrix[b][i]}")
        for lid, terms in self.licenses.items():
            if _key(lid) != lid:
                raise ValueError(f"licence id {lid!r} is not normalised (use {_key(lid)!r})")
            if terms.category not in cats:
                raise ValueError(f"licence {lid!r} has unknown category {terms.category!r}")
        for alias, target in self.aliases.items():
            if target not in self.licenses:
                raise ValueError(f"alias {alias!r} points at unknown licence {target!r}")
        return self

    def outcome(self, a: str, b: str) -> Outcome:
        """The matrix entry for two known licences (``ok`` for the same licence)."""
        if a == b:
            return "ok"
        ca, cb = self.licenses[a].category, self.licenses[b].category
        return self.matrix[ca][self.categories.index(cb)]

    def rank(self, license_id: str) -> int:
        terms = self.licenses.get(license_id)
        return self.categories.index(terms.category) if terms else len(self.categories)


def load_license_policy(path: str | Path | None = None) -> LicensePolicy:
    """Load and validate a policy YAML (the shipped default when ``path`` is None)."""
    path = Path(path) if path is not None else DEFAULT_POLICY_PATH
    if not path.exists():
        raise PolicyError(f"{path}: cannot read licence policy (no such file)")
    try:
        raw = read_bytes(path, what="licence policy")
        doc = load_yaml(decode_text(raw, what=f"{path}: licence policy"), what=f"{path}: licence policy")
    except UsageError as exc:
        raise PolicyError(str(exc)) from None
    if not isinstance(doc, dict):
        raise PolicyError(f"{path}: licence policy must be a YAML mapping")
    doc["aliases"] = {_key(str(k)): v for k, v in (doc.get("aliases") or {}).items()}
    doc["review_licenses"] = [_key(str(v)) for v in doc.get("review_licenses") or []]
    try:
        return LicensePolicy(**doc, sha256=hashlib.sha256(raw).hexdigest())
    except (ValidationError, TypeError) as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else {"loc": (), "msg": str(exc)}
        where = error_location(first["loc"])
        raise PolicyError(f"{path}: invalid licence policy at {where or 'top level'}: {first['msg']}") from exc


def _key(text: str) -> str:
    """Lower-case, spaces/underscores/commas to single dashes: 'Apache 2.0' -> 'apache-2.0'."""
    return re.sub(r"[\s_,]+", "-", text.strip().lower()).strip("-")


def normalize_license(text: str, policy: LicensePolicy) -> str:
    """The policy's id for a licence string, or its normalised form when the policy lacks it."""
    key = _key(text)
    if key in policy.licenses:
        return key
    return policy.aliases.get(key, key)


def detect_license_text(text: str, policy: LicensePolicy) -> str | None:
    """The licence a LICENSE file's text is, by the policy's signatures (most specific wins)."""
    haystack = " ".join(text.lower().split())
    best: tuple[int, str] | None = None
    for lid, terms in policy.licenses.items():
        for phrases in terms.signatures:
            if phrases and all(" ".join(p.lower().split()) in haystack for p in phrases):
                weight = sum(len(p) for p in phrases)
                if best is None or weight > best[0]:
                    best = (weight, lid)
    return best[1] if best else None


class LicenseOutcome(_Frozen):
    effective_license: str
    obligations: tuple[str, ...]
    findings: tuple[Finding, ...]


def combine(
    parents: list[tuple[str, str | None]], policy: LicensePolicy, intended_use: str
) -> LicenseOutcome:
    """Apply the policy to ``parents`` = [(reference, licence id or None)] for ``intended_use``."""
    findings: list[Finding] = []
    known: dict[str, list[str]] = {}  # licence id -> parents carrying it
    for ref, lid in parents:
        if lid is None:
            sev = "error" if policy.missing_license == "refuse" else "warning"
            what = "refused" if sev == "error" else "needs review"
            findings.append(Finding(parent=ref, check="license.missing", severity=sev,
                                    message=f"no licence declared (card front matter or LICENSE file): {what}; add `license:` to the model card"))
            continue
        if lid not in policy.licenses:
            if policy.unknown_license == "refuse" and lid not in policy.review_licenses:
                findings.append(Finding(parent=ref, check="license.unknown", severity="error",
                                        message=f"licence {lid!r} is not in the policy: refused; add it to the policy (--policy FILE) once reviewed"))
            else:
                findings.append(Finding(parent=ref, check="license.review", severity="warning",
                                        message=f"licence {lid!r} is not in the policy: needs review before release"))
            continue
        known.setdefault(lid, []).append(ref)
        terms = policy.licenses[lid]
        if not terms.derivatives:
            findings.append(Finding(parent=ref, check="license.no-derivatives", severity="error",
                                    message=f"{lid} forbids derivatives and a merge is one: refused; use another parent"))
        if intended_use == "commercial" and not terms.commercial:
            findings.append(Finding(parent=ref, check="license.non-commercial", severity="error",
                                    message=f"{lid} is non-commercial but intended_use is commercial: refused; drop this parent or set intended_use: research"))

    ids = sorted(known, key=lambda lid: (-policy.rank(lid), lid))
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            outcome = policy.outcome(a, b)
            if outcome == "ok":
                continue
            pair = f"{a} ({', '.join(known[a])}) with {b} ({', '.join(known[b])})"
            sev = "error" if outcome == "refuse" else "warning"
            verb = "refused by the compatibility matrix" if sev == "error" else "needs review"
            findings.append(Finding(parent=known[b][0], check="license.compatibility", severity=sev,
                                    message=f"combining {pair}: {verb}"))

    everything = ids + sorted({lid for _, lid in parents if lid is not None and lid not in known})
    if any(lid is None for _, lid in parents):
        everything.append("NOASSERTION")
    obligations: list[str] = []
    for lid in ids:
        for text in policy.licenses[lid].obligations:
            line = f"{lid}: {text}"
            if line not in obligations:
                obligations.append(line)
    for lid in everything[len(ids):]:
        obligations.append(f"{lid}: terms unknown to the policy; review before any release")
    return LicenseOutcome(
        effective_license=" AND ".join(everything) if everything else "NOASSERTION",
        obligations=tuple(obligations),
        findings=tuple(findings),
    )


__all__ = [
    "DEFAULT_POLICY_PATH", "LicensePolicy", "LicenseTerms", "LicenseOutcome", "WeightPolicy",
    "combine", "detect_license_text", "load_license_policy", "normalize_license",
]
