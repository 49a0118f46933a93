"""The merged model's card: Hugging Face front matter plus a body a reviewer can read.

Front matter follows the Hub's model-card metadata: ``base_model`` (every parent: its Hub repo id
when it was read from the Hugging Face cache, else its directory's name),
``base_model_relation: merge``, ``license``, ``tags`` and a ``model-index`` holding the evaluation
results (one task per domain, exact match). The body shows the recipe, a lineage summary, the
licence obligations and the gate results.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from registry.lineage import LineageRecord


def _front_matter(record: LineageRecord, name: str) -> dict:
    results = [
        {
            "task": {"type": "text-generation", "name": domain},
            "dataset": {"type": domain, "name": domain},
            "metrics": [{"type": _metric(record, domain), "value": round(score, 6),
                         "name": _metric(record, domain).replace("_", " ")}],
        }
        for domain, score in sorted(record.evaluation.scores.items())
    ]
    meta = {
        # Hub ids where known; a local parent by its directory's name, never a path from this machine
        "base_model": [p.repo_id or Path(p.path).name for p in record.parents],
        "base_model_relation": "merge",
        **_license_meta(record.audit.effective_license),
        "tags": ["merge", "mergeops"],
    }
    if results:
        meta["model-index"] = [{"name": name, "results": results}]
    return meta


def _license_meta(effective: str | None) -> dict:
    """The Hub takes one licence id; a compound (``a AND b``) or unknown one is ``other``, named in
    ``license_name`` and spelled out in the LICENSE file beside the card."""
    if effective and " " not in effective:
        return {"license": effective}
    return {"license": "other", "license_name": effective or "unknown", "license_link": "LICENSE"}


def _metric(record: LineageRecord, domain: str) -> str:
    return record.evaluation.metrics.get(domain, "exact_match")


def render_model_card(record: LineageRecord, *, name: str) -> str:
    meta = yaml.safe_dump(_front_matter(record, name), sort_keys=False, allow_unicode=True)
    lines = [
        "---", meta.rstrip(), "---", "",
        f"# {name}", "",
        f"A merge of {len(record.parents)} models with `{record.recipe.method or 'unknown'}`, produced by mergeops. "
        f"Content id `{record.merged.content_id}`.", "",
        "## Recipe", "",
        f"sha256 `{record.recipe.sha256}`, seed {record.seed}.", "",
        "```yaml", record.recipe.text.rstrip(), "```", "",
        "## Lineage", "",
        "| parent | content id | licence | audit |", "| --- | --- | --- | --- |",
    ]
    lines += [f"| {p.reference} | `{p.content_id[:16]}` | {p.license or 'unknown'} | {p.audit_verdict} |"
              for p in record.parents]
    lines += ["", f"Code: git `{record.code.git_sha or 'unknown'}`, mergeops {record.code.mergeops or 'unknown'}; "
              f"DVC revision `{record.dvc.revision or 'none'}`. Requested by {record.requested_by}.", ""]
    lines += ["## Licence obligations", ""]
    lines += [f"- {o}" for o in record.audit.obligations] or ["- none recorded"]
    lines += ["", f"Effective licence: {record.audit.effective_license or 'unknown'} "
              f"(audit verdict: {record.audit.verdict}).", "", "## Evaluation", ""]
    for kind, judged in (("Suite", record.suite), ("Gate policy", record.policy)):
        if judged is not None:
            lines += [f"{kind}: `{judged.name}` ({judged.source}; sha256 `{judged.sha256[:16]}`).", ""]
    if record.evaluation.scores:
        lines += ["| domain | metric | score | retention |", "| --- | --- | --- | --- |"]
        lines += [f"| {d} | {_metric(record, d)} | {s:.3f} | {_fmt(record.evaluation.retention.get(d))} |"
                  for d, s in sorted(record.evaluation.scores.items())]
    else:
        lines.append("No evaluation recorded.")
    lines += ["", "## Gates", ""]
    if record.gates:
        lines += ["| gate | observed | threshold | result | reason |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {g.gate} | {_fmt(g.observed)} | {_fmt(g.threshold)} | {'pass' if g.passed else 'FAIL'} | "
                  f"{g.reason} |" for g in record.gates]
    else:
        lines.append("No gates recorded.")
    lines += ["", f"Leakage checks: {record.leakage_verdict}; gate verdict: {record.gate_verdict}.", ""]
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
