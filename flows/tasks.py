"""The pipeline's Prefect tasks: each wraps one plain function from merge/, evaluation/ or registry/.

Retries sit on the decorator and fire only for transient I/O (``OSError``); a check that says no
(``CheckFailed``) or bad input (``UsageError``) fails at once. Prefect's own result cache is off
(``cache_policy=NONE``): steps are reused by content, not by Prefect's input hashing of paths —
the merge through ``<cache>/merges/<key>`` (key = recipe sha256 + parents' content ids + code
version), the evaluation through evaluation/'s cache keyed by model content id and suite hash.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from flows.errors import StepRefused
from merge.errors import RecipeError
from merge.manifest import MANIFEST_NAME, canonical_json, sha256_file

_CODE_DIRS = ("merge",)  # the code whose change changes a merge's bytes
_REPO = Path(__file__).resolve().parent.parent


def _transient(task, task_run, state) -> bool:
    """Retry only I/O hiccups (a busy file system, a flaky remote), never a refusal."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:
        return False
    return False


_IO_RETRIES = dict(retries=2, retry_delay_seconds=2, retry_condition_fn=_transient, cache_policy=NONE)


# -- content ids -----------------------------------------------------------------------------
def code_version() -> str:
    """sha256 over the merge engine's sources and the versions of the packages it computes with."""
    digest = hashlib.sha256()
    for folder in _CODE_DIRS:
        for path in sorted((_REPO / folder).rglob("*.py")):
            digest.update(path.relative_to(_REPO).as_posix().encode() + b"\0" + path.read_bytes())
    for package in ("mergeops", "torch", "safetensors", "numpy"):
        try:
            digest.update(f"{package}=={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            pass
    return digest.hexdigest()


def merge_cache_key(recipe_sha256: str, parent_ids: list[str], code: str, statistics: list[str] = ()) -> str:
    """The merged model's cache key: same recipe bytes, same parent bytes, same calibration
    statistics bytes (``statistics``: their sha256s), same code → same key."""
    key = {"recipe": recipe_sha256, "parents": sorted(parent_ids), "code": code}
    if statistics:  # a regmean / fisher recipe: recalibrating under the same path is another merge
        key["statistics"] = sorted(statistics)
    return hashlib.sha256(canonical_json(key)).hexdigest()


def statistics_ids(recipe) -> list[str]:
    """The sha256 of every statistics file the recipe names; RecipeError for one that is missing."""
    out = []
    for path in recipe.statistics_files():
        if not path.is_file():
            raise RecipeError(f"statistics file {path} not found (see `mergeops calibrate`)")
        out.append(sha256_file(path))
    return out


@dataclass(frozen=True)
class MergeOutcome:
    key: str
    content_id: str
    out_dir: str
    cached: bool  # True: an identical merge was reused, nothing was merged


# -- tasks -------------------------------------------------------------------------------------
@task(name="read-settings", cache_policy=NONE)
def read_settings(suite: str, zoo_dir: str | None, cache_dir: str, policy: str | None) -> dict:
    """The suite and gate policy this run is judged by ({"suite": ..., "policy": ...}, each with its
    text and sha256); a bad suite or policy fails here, before anything is audited or merged."""
    from evaluation.provenance import policy_settings, suite_settings

    return {"suite": suite_settings(suite, zoo_dir=Path(zoo_dir) if zoo_dir else None,
                                    cache_dir=Path(cache_dir)).model_dump(),
            "policy": policy_settings(policy).model_dump()}


@task(name="audit", cache_policy=NONE)
def audit_parents(refs: list[str], intended_use: str, base_dir: str, pins: dict[str, str] | None):
    """Audit every parent as the recipe names it; an error finding stops the run (AuditFailed)."""
    from registry.audit import audit_models

    report = audit_models(refs, intended_use=intended_use, base_dir=Path(base_dir), pins=pins)
    return report.raise_for_verdict()


@task(name="merge", **_IO_RETRIES)
def merge_recipe(recipe, key: str, cache_dir: str) -> MergeOutcome:
    """Run the merge into ``<cache>/merges/<key>``, or reuse the finished merge already there."""
    from flows.cleanup import sweep_dead_temp_dirs
    from merge.run import run_merge

    sweep_dead_temp_dirs(Path(cache_dir) / "merges")  # what killed merges and registrations left
    target = Path(cache_dir) / "merges" / key
    if (target / MANIFEST_NAME).is_file():
        from merge.errors import MergeopsError
        from registry.model_files import check_model_dir

        try:  # reused only if its bytes still match its manifest: a cache is not a trusted store
            return MergeOutcome(key, check_model_dir(target)["content_id"], str(target), cached=True)
        except MergeopsError:
            shutil.rmtree(target)  # edited or damaged: merge again
    # run_merge builds in a temp dir beside `target` and renames it: a crash leaves no `target`.
    result = run_merge(recipe, target, progress=False)
    return MergeOutcome(key, result.content_id, str(target), cached=False)


@task(name="evaluate", **_IO_RETRIES)
def evaluate(models: list[tuple[str, str, str]], suite: str, zoo_dir: str | None, cache_dir: str, policy: str | None,
             audit_verdict: str, champion_scores: dict[str, float] | None):
    """Evaluate the merged model and every parent (each cached by content id and suite hash).

    Returns the report in DESIGN.md's ``--json`` keys (plus ``runs``: per model, ran or cached)."""
    from evaluation.run import ModelRef, evaluate_models

    refs = [ModelRef(path=Path(p), role=role, name=name) for p, role, name in models]
    report = evaluate_models(refs, suite=suite, zoo_dir=Path(zoo_dir) if zoo_dir else None, cache_dir=Path(cache_dir),
                             policy=policy or "default",
                             audit_verdict=audit_verdict, license_verdict=audit_verdict,
                             champion_scores=champion_scores)
    return report.to_json()


@task(name="gate", cache_policy=NONE)
def check_gates(gates: list[dict]) -> None:
    """Stop the run when any gate failed, naming each failed gate with its value and threshold."""
    failed = [g for g in gates if not g["passed"]]
    if failed:
        raise StepRefused("gate", "; ".join(g.get("reason") or f"{g['gate']} failed" for g in failed))


@task(name="plots", cache_policy=NONE)
def draw_plots(evaluation: dict, out_dir: str, stem: str) -> list[str]:
    """Per-domain bars with the gates' thresholds drawn, and the domains x models heatmap."""
    from evaluation.report import plots_of

    return [str(p) for p in plots_of(evaluation, Path(out_dir), stem)]


@task(name="version-artifacts", **_IO_RETRIES)
def version_artifacts(store_root: str, remote: str, items: dict[str, str], message: str,
                      endpoint: str | None = None):
    """DVC-add the parents, the merged model and the reports; return (md5s, revision)."""
    from flows.dvc_store import DvcStore

    return DvcStore(Path(store_root), remote, endpoint).ensure().track({k: Path(v) for k, v in items.items()}, message)


@task(name="push-artifacts", **_IO_RETRIES)
def push_artifacts(store_root: str, remote: str, endpoint: str | None = None) -> None:
    from flows.dvc_store import DvcStore

    DvcStore(Path(store_root), remote, endpoint).push()


@task(name="settle-registrations", cache_policy=NONE)
def settle_registrations(tracking_uri: str, audit_log_path: str, name: str) -> list[str]:
    """Complete or roll back the registrations of ``name`` that killed runs left (registry/recovery.py)."""
    from registry.recovery import settle_abandoned

    return settle_abandoned(tracking_uri, Path(audit_log_path), name)


@task(name="check-registered", cache_policy=NONE)
def check_registered(tracking_uri: str, name: str, version: str, audit_log_path: str) -> None:
    """An existing version is reused only when the log registered it (its MLflow copy is added if missing)."""
    from registry.mlflow_registry import complete_registration, get_version

    complete_registration(tracking_uri, get_version(tracking_uri, name, version), Path(audit_log_path), sign=False)


@task(name="register", cache_policy=NONE)
def register(tracking_uri: str, name: str, model_dir: str, lineage, audit_log_path: str,
             evaluation_files: list[str], audit_reports: list[str], artifact_location: str,
             signing_key_path: str, license_links: dict[str, str] | None = None, registration: str | None = None):
    """Register the candidate (``registration``: its journal file, begun by the pipeline)."""
    from flows.governance import Governance
    from flows.settings import get_settings

    return Governance(get_settings()).register(
        signing_key_path=Path(signing_key_path), tracking_uri=tracking_uri, name=name, model_dir=Path(model_dir),
        lineage=lineage, audit_log_path=Path(audit_log_path), evaluation_files=[Path(p) for p in evaluation_files],
        audit_reports=[Path(p) for p in audit_reports], artifact_location=artifact_location,
        license_links=license_links, registration=registration)
