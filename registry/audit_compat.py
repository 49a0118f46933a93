"""Checks across the audited set: which parent is the base, architecture, tokenizer, ancestry.

Architecture comparison is the merge planner's own (``merge.layout.compare_layouts``), so the
audit and the merge refuse the same parents with the same message. The reference each parent is
compared with is the base when one is known, else the fingerprint most parents share, so the odd
one out is the one named.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from merge.errors import CompatibilityError
from merge.layout import ModelLayout, compare_layouts
from registry.schemas import Finding


@dataclass
class ParentFacts:
    """What the set-level checks need to know about one parent."""

    ref: str
    path: Path
    repo_id: str | None = None  # a Hugging Face cache snapshot's "org/name"
    declared_bases: list[str] = field(default_factory=list)
    layout: ModelLayout | None = None
    architecture: str | None = None
    tokenizer: str | None = None


def _tail(name: str) -> str:
    return name.rstrip("/").split("/")[-1].lower()


def _matches(parent: ParentFacts, name: str) -> bool:
    # A snapshot dir is named by its commit: its repo id is the name a card's base_model uses.
    return name in (parent.ref, parent.repo_id) or _tail(name) == _tail(parent.repo_id or parent.path.name)


def find_base(parents: list[ParentFacts], explicit: str | None) -> str | None:
    """The explicit base, else the one audited parent that the others declare as base_model."""
    if explicit is not None:
        return explicit
    declared = {name for p in parents for name in p.declared_bases}
    hits = [p.ref for p in parents if not p.declared_bases and any(_matches(p, n) for n in declared)]
    return hits[0] if len(hits) == 1 else None


def _reference(parents: list[ParentFacts], base: str | None, key) -> ParentFacts | None:
    candidates = [p for p in parents if key(p) is not None]
    if not candidates:
        return None
    for p in candidates:
        if p.ref == base:
            return p
    counts = Counter(key(p) for p in candidates)
    top = max(counts.values())
    return next(p for p in candidates if counts[key(p)] == top)


def check_architecture(parents: list[ParentFacts], base: str | None) -> list[Finding]:
    ref = _reference(parents, base, lambda p: p.architecture)
    findings = []
    for p in parents:
        if ref is None or p is ref or p.layout is None or p.architecture == ref.architecture:
            continue
        try:
            compare_layouts(ref.layout, p.layout)
            why = "tensor names and shapes differ"
        except CompatibilityError as exc:
            why = str(exc)
        findings.append(Finding(parent=p.ref, check="compat.architecture", severity="error",
                                message=f"architecture differs from {ref.ref}: {why}; it cannot be merged with them"))
    return findings


def check_tokenizer(parents: list[ParentFacts], base: str | None) -> list[Finding]:
    ref = _reference(parents, base, lambda p: p.tokenizer)
    findings = []
    for p in parents:
        if p.layout is None and p.tokenizer is None:
            continue  # already refused for its format
        if p.tokenizer is None:
            if ref is not None:
                findings.append(Finding(parent=p.ref, check="compat.tokenizer", severity="warning",
                                        message="no tokenizer.json: its tokenizer cannot be compared with the others'"))
        elif ref is not None and p.tokenizer != ref.tokenizer:
            findings.append(Finding(
                parent=p.ref, check="compat.tokenizer", severity="error",
                message=f"tokenizer differs from {ref.ref}'s (vocabulary or special tokens): the same token id "
                        "would mean different text in merged embeddings; align vocabularies or drop this parent",
            ))
    return findings


def _root(parent: ParentFacts, parents: list[ParentFacts], seen: frozenset[str] = frozenset()) -> str:
    if not parent.declared_bases:
        return _tail(parent.repo_id or parent.path.name)
    name = parent.declared_bases[0]
    ancestor = next((p for p in parents if p is not parent and _matches(p, name)), None)
    if ancestor is None or ancestor.ref in seen:
        return _tail(name)
    return _root(ancestor, parents, seen | {parent.ref})


def check_ancestry(parents: list[ParentFacts], base: str | None, severity: str) -> list[Finding]:
    """Parents whose declared base_model chains do not meet in one common base."""
    if len(parents) < 2:
        return []
    roots = {p.ref: _root(p, parents) for p in parents}
    by_ref = {p.ref: p for p in parents}
    expected = roots[base] if base in roots else Counter(roots.values()).most_common(1)[0][0]
    findings = []
    for ref, root in roots.items():
        if root == expected:
            continue
        said = by_ref[ref].declared_bases
        claim = f"declares base_model {said[0]!r}" if said else "declares no base_model"
        findings.append(Finding(
            parent=ref, check="compat.ancestry", severity=severity,
            message=f"{claim} but the others descend from {expected!r}: models from different bases "
                    "need permutation alignment (e.g. git re-basin) before a merge means anything",
        ))
    return findings
