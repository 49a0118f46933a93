"""Human-readable and on-disk forms of an EvaluationReport: the domains x models table, the JSON
file (DESIGN.md's keys) and the plots beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from evaluation._io import atomic_write_text
from evaluation.gates import score_floors
from evaluation.plots import write_plots
from evaluation.run import EvaluationReport


def _num(x) -> str:
    return "-" if x is None or x != x else f"{x:.3f}"


def format_table(report: EvaluationReport) -> str:
    """Domains x models (primary metric), retention column, then leakage failures and gates."""
    scores = report.scores
    models = list(scores.columns)
    names = [f"{m}*" if m == report.merged else m for m in models]
    width = max([len(str(d)) for d in scores.index] + [6])
    cols = [max(len(n), 7) for n in names]
    head = f"{'domain':<{width}}  " + "  ".join(f"{n:>{c}}" for n, c in zip(names, cols)) + "  retention"
    lines = [head]
    for domain, row in scores.iterrows():
        cells = "  ".join(f"{_num(row[m]):>{c}}" for m, c in zip(models, cols))
        lines.append(f"{str(domain):<{width}}  {cells}  {_num(report.retention.get(str(domain))):>9}")
    metrics = sorted({m for _, m in report.primary.values()})
    lines.append(f"(* merged; metric: {', '.join(metrics)}; suite {report.suite}; "
                 f"lm-eval {'/'.join(r['lm_eval'] for r in report.runs)})")
    if report.specialists and report.merged is not None:
        value = "n/a (every specialist scores 0)" if report.normalized_average is None \
            else f"{report.normalized_average:.3f}"
        lines.append(f"normalized average (merged / specialist): {value} over "
                     f"{', '.join(f'{d}={m}' for d, m in sorted(report.specialists.items()))}"
                     f" (specialists: {report.specialists_source})")
    failed = [r for r in report.leakage if r.verdict == "fail"]
    unchecked = [r for r in report.leakage if r.verdict == "not_checked"]
    lines.append(f"leakage: {len(report.leakage)} checks, {len(failed)} failed, {len(unchecked)} not checked")
    lines += [f"  FAIL {r.check} {r.model}: " + (f"{r.value:.3g} (threshold {r.threshold})" if r.value is not None
                                                 else f"{r.detail.get('path', '')} {r.detail.get('reason', '')}".strip())
              for r in failed]
    lines += [f"  NOT CHECKED {r.check} {r.model}: {r.detail.get('reason', '')}" for r in unchecked]
    if report.gates is not None:
        bad = [g for g in report.gates if not g.passed]
        lines.append(f"gates: {len(report.gates) - len(bad)} passed, {len(bad)} failed")
        lines += [f"  FAIL {g.gate}: {g.reason}" for g in bad]
    return "\n".join(lines)


def write_report(report: EvaluationReport, json_path: Path) -> list[Path]:
    """The JSON at ``json_path`` plus ``<stem>.bars.png`` and ``<stem>.heatmap.png`` beside it."""
    json_path = Path(json_path)
    doc = report.to_json()
    atomic_write_text(json_path, json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return [json_path, *plots_of(doc, json_path.parent, json_path.stem)]


def plots_of(doc: dict, out_dir: Path, stem: str) -> list[Path]:
    """The bars (gate thresholds drawn) and the heatmap of an evaluation report in its JSON form."""
    scores = pd.DataFrame(doc["scores"]).T  # {domain: {model: score}} -> domains x models
    metric = ", ".join(sorted({p["metric"] for p in doc.get("primary", {}).values()})) or "score"
    floors = score_floors(doc.get("gates") or [], doc["scores"], doc.get("merged")) if doc.get("merged") else {}
    return write_plots(scores.astype(float), Path(out_dir), stem, merged=doc.get("merged"), metric=metric,
                       floors=floors)
