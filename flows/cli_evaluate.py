"""``mergeops evaluate``: multi-domain lm-eval scores, leakage checks and (with a policy) gates."""

from __future__ import annotations

import math
from pathlib import Path

import click

from flows.cli_options import suite_option, zoo_option
from merge.errors import UsageError


def _read_json(option: str, path: str) -> object:
    """A JSON file given on the command line: a regular file within bounds (never a FIFO or
    /dev/zero), strict UTF-8, bounded depth; any failure is one line naming the option."""
    from merge.bounded import loads_json, read_bytes

    try:
        return loads_json(read_bytes(path, what="JSON file"), what=path)
    except UsageError as exc:
        raise UsageError(f"{option} {exc}") from None


def _verdicts(audit_json: str | None) -> tuple[str | None, str | None]:
    """(audit verdict, licence verdict) from `mergeops audit --json` output; licence fails on any
    error finding of a licence check."""
    if audit_json is None:
        return None, None
    doc = _read_json("--audit", audit_json)
    verdict = doc.get("verdict") if isinstance(doc, dict) else None
    findings = doc.get("findings", []) if isinstance(doc, dict) else None
    if verdict not in ("pass", "fail") or not isinstance(findings, list):
        raise UsageError(f"--audit {audit_json}: not the JSON of `mergeops audit --json` "
                         "(a \"verdict\" of pass or fail and a \"findings\" list)")
    licence_errors = [f for f in findings if isinstance(f, dict)
                      and f.get("severity") == "error" and "licen" in str(f.get("check", "")).lower()]
    return verdict, "fail" if licence_errors else "pass"


def _champion(path: str | None) -> dict[str, float] | None:
    """Per-domain champion scores: a {domain: score} JSON, or an earlier `evaluate --json` file."""
    if path is None:
        return None
    doc = _read_json("--champion", path)
    if isinstance(doc, dict) and "merged_scores" in doc:
        doc = doc["merged_scores"]
    if not isinstance(doc, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                            and math.isfinite(v) for v in doc.values()):
        raise UsageError(f"--champion {path}: expected {{domain: score}} or an `evaluate --json` file")
    return {str(k): float(v) for k, v in doc.items()}


@click.command("evaluate")
@click.argument("model_dirs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--merged", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="The merged model (candidate); MODEL_DIRs are then its parents.")
@suite_option
@zoo_option
@click.option("--policy", default=None, metavar="FILE|default",
              help="Apply gates: a policy YAML laid over the shipped default, or 'default' itself.")
@click.option("--audit", "audit_json", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="`mergeops audit --json` output; supplies the audit and licence verdicts the gates need.")
@click.option("--champion", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="The champion's scores ({domain: score} or its evaluate --json) for the regression gate.")
@click.option("--json", "json_path", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the report as JSON (DESIGN.md keys) and two PNG plots beside it.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Where suites and results are cached (default: $MERGEOPS_HOME/cache/evaluations).")
@click.option("--threads", default=None, type=click.IntRange(min=1), metavar="N",
              help="torch CPU threads while evaluating (1 is fastest for tiny models on a busy machine).")
def evaluate(model_dirs: tuple[str, ...], merged: str | None, suite: str, zoo_dir: str | None,
             policy: str | None, audit_json: str | None, champion: str | None, json_path: str | None,
             cache_dir: str | None, threads: int | None) -> None:
    """Evaluate a merged model and its parents on every domain of a suite (lm-eval, in memory,
    offline), check leakage (canaries, PII, contamination) and, with --policy, apply the gates.

    Which model is the merged one: --merged DIR if given; else the directory holding a
    mergeops.manifest.json (its manifest's parents are evaluated too when no parent is given);
    else a single MODEL_DIR is evaluated alone as the candidate. Results are cached by model
    content id, suite hash and lm-eval version: a re-run with nothing changed runs nothing.
    Contamination is measured against the training data each parent's model card declares
    (`training_data:` manifest, local `datasets:`); a parent declaring none is reported
    not_checked.

    Exit status: 0 done (and every gate passed), 1 a gate failed, 2 bad input.

    \b
    Example:
      mergeops zoo build --profile tiny --out /tmp/zoo
      mergeops evaluate --zoo /tmp/zoo --merged /tmp/zoo/models/sort /tmp/zoo/models/base /tmp/zoo/models/reverse
      mergeops evaluate --zoo /tmp/zoo /tmp/zoo/models/proprietary --policy default --json /tmp/eval/report.json
      # after `mergeops merge recipe.yaml --out /tmp/merged`, its manifest names the parents:
      # mergeops evaluate --zoo /tmp/zoo /tmp/merged --policy default
      # your own models and suite file, no zoo (README, "Evaluation and gates"):
      # mergeops evaluate /tmp/merged --suite suite.yaml --policy policy.yaml --audit audit.json
    """
    from evaluation.report import format_table, write_report
    from evaluation.roles import resolve_models
    from evaluation.run import evaluate_models
    from flows.settings import get_settings

    if not model_dirs and merged is None:
        raise UsageError("give at least one MODEL_DIR (or --merged DIR); see `mergeops evaluate --help`")
    settings = get_settings()
    suite = suite or settings.suite or "zoo"
    zoo_dir = zoo_dir or settings.zoo
    audit_verdict, license_verdict = _verdicts(audit_json)
    models = resolve_models([Path(d) for d in model_dirs], Path(merged) if merged else None)
    report = evaluate_models(
        models, suite=suite, zoo_dir=Path(zoo_dir) if zoo_dir else None,
        cache_dir=Path(cache_dir) if cache_dir else settings.cache_dir / "evaluations",
        policy=policy, audit_verdict=audit_verdict, license_verdict=license_verdict,
        champion_scores=_champion(champion), threads=threads)
    click.echo(format_table(report))
    if json_path:
        for path in write_report(report, Path(json_path)):
            click.echo(f"wrote {path}")
    if report.passed is False:
        from evaluation.errors import GateFailed

        failed = [g for g in report.gates if not g.passed]
        raise GateFailed("gate failed: " + "; ".join(g.reason or g.gate for g in failed))
