"""The governed pipeline as one Prefect flow: audit → merge → evaluate → gate → version → register → approval.

The flow only sequences tasks (flows/tasks.py), each wrapping one plain library function. Any
refusal raises before ``register``, so a failed run registers nothing and its state says why. A
re-run whose recipe, parents and code are unchanged reuses the merge, hits the evaluation cache and
finds the version it registered before: no new version.
"""

from __future__ import annotations

import getpass
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from flows import tasks
from flows.approval import await_approval
from flows.dvc_store import lock_md5s, parent_path, statistics_path
from flows.evaluation import run_evaluation
from flows.governance import Governance
from flows.locks import model_lock
from flows.settings import get_settings
from flows.versions import baseline, find_same
from registry import journal


@dataclass
class PipelineResult:
    name: str
    status: str  # "awaiting_approval" | "approved" | "rejected" | "unchanged"
    version: str
    content_id: str
    merge_cached: bool
    gates: list[dict] = field(default_factory=list)
    dvc_revision: str | None = None
    summary: str = ""  # the markdown of the run's summary artifact

    def to_dict(self) -> dict:
        return asdict(self)


def model_name(recipe, recipe_path: Path) -> str:
    prefix = get_settings().registered_model_prefix
    return prefix + (recipe.name or recipe_path.stem)


def parent_dirs(recipe) -> list[str]:
    """Absolute parent directories, in the recipe's order, without duplicates."""
    seen: dict[str, None] = {}
    for ref in recipe.model_refs():
        seen[str(recipe.path_of(ref).resolve())] = None
    return list(seen)


def find_zoo_dir(parents: list[str]) -> Path | None:
    """The zoo a parent comes from (``<zoo>/models/<name>`` beside ``<zoo>/zoo.json``)."""
    for parent in parents:
        zoo = Path(parent).parent.parent
        if (zoo / "zoo.json").is_file():
            return zoo
    return None


@flow(name="merge-pipeline", log_prints=True)
def merge_pipeline(recipe_path: str, policy_path: str | None = None, requested_by: str | None = None,
                   zoo_dir: str | None = None, suite: str | None = None, wait_for_approval: bool = True,
                   approval_timeout_s: int = 3600, name: str | None = None) -> dict:
    """Run one recipe through every gate to a registered candidate (or a refusal, with its reason).

    Unset settings come from mergeops.yaml: ``suite`` (else the shipped ``zoo``), ``policy_path``
    (the recipe's own ``policy:`` first, else the shipped default) and ``zoo_dir`` (else the zoo the
    parents live in, if any: only suites with zoo domains need one)."""
    from merge.hub import display_name
    from merge.recipe import load_recipe

    log = get_run_logger()
    settings = get_settings()
    requested_by = Governance(settings).requester(requested_by) or getpass.getuser()
    path = Path(recipe_path).resolve()
    recipe = load_recipe(path, settings.recipe_base_dir)
    name = settings.registered_model_prefix + name if name else model_name(recipe, path)
    parents = parent_dirs(recipe)
    if policy_path is None:
        policy_path = str(recipe.path_of(recipe.policy)) if recipe.policy else settings.policy
    zoo = zoo_dir or settings.zoo or find_zoo_dir(parents)
    zoo = str(zoo) if zoo else None
    suite = suite or settings.suite or "zoo"
    # The suite and policy are read first: a bad one fails now, not after the merge.
    judged_by = tasks.read_settings(suite, zoo, str(settings.cache_dir / "evaluations"), policy_path)

    audit = tasks.audit_parents(recipe.model_refs(), recipe.intended_use or "research", str(recipe.base_dir),
                                recipe.pins)
    log.info("audit passed: %d parents, effective licence %s", len(audit.parents), audit.effective_license)
    # The audit hashed every parent: those content ids key the merge, the store and the lineage.
    parent_ids = {str(Path(p.resolved_path).resolve()): p.content_id for p in audit.parents}
    # Pin the merge to the audited bytes: run_merge re-hashes each parent before reading a weight.
    recipe = recipe.model_copy(update={"pins": {**audit.pins(), **(recipe.pins or {})}})
    key = tasks.merge_cache_key(recipe.sha256, list(parent_ids.values()), tasks.code_version(),
                                tasks.statistics_ids(recipe))
    merged = tasks.merge_recipe(recipe, key, str(settings.cache_dir))
    log.info("merge %s: %s (content id %s)", "reused" if merged.cached else "done", merged.out_dir,
             merged.content_id[:12])

    champion = baseline(settings.tracking_uri, name)
    champion_scores = _champion_scores(settings.tracking_uri, champion)
    models = [(merged.out_dir, "merged", name)] + [(p, "parent", display_name(p)) for p in parents]
    evaluation = run_evaluation(settings, models, suite, zoo, str(settings.cache_dir / "evaluations"), policy_path,
                                audit.verdict, champion_scores)
    gates = evaluation.get("gates", [])
    _gate_table(name, gates)
    try:
        tasks.check_gates(gates)
    except Exception as exc:
        _summary(name, None, merged, evaluation, status=f"stopped: {exc}")
        raise
    log.info("gates passed: %d of %d", sum(g["passed"] for g in gates), len(gates))

    # One writer of this model's versions at a time (two runs of one recipe register one version).
    with model_lock(settings.home_dir, name):
        if not settings.service_url:  # registrations of this model that a killed run left: settled first
            for line in tasks.settle_registrations(settings.tracking_uri, str(settings.audit_log_path), name):
                log.info("%s", line)
        same = find_same(settings.tracking_uri, name, recipe_sha256=recipe.sha256,
                         parent_content_ids=list(parent_ids.values()), merged_content_id=merged.content_id)
        if same is not None:
            if not settings.service_url:
                tasks.check_registered(settings.tracking_uri, name, same.version, str(settings.audit_log_path))
            log.info("%s v%s already holds these bytes; nothing registered", name, same.version)
            summary = _summary(name, same.version, merged, evaluation, status="unchanged (already registered)")
            return PipelineResult(name, "unchanged", same.version, merged.content_id, merged.cached, gates,
                                  same.tag("dvc_rev"), summary).to_dict()
        info, revision = _version_and_register(name, recipe, merged, parent_ids, audit, evaluation, judged_by,
                                               requested_by)
    tasks.push_artifacts(str(settings.store_dir), settings.dvc_remote_url, settings.dvc_remote_endpoint)
    summary = _summary(name, info.version, merged, evaluation, status="registered with alias `candidate`")
    _link(settings.tracking_uri, name, info.version)
    status = "awaiting_approval"
    if wait_for_approval:
        status = await_approval(name, info.version, requested_by, timeout_s=approval_timeout_s)
    return PipelineResult(name, status, info.version, merged.content_id, merged.cached, gates, revision,
                          summary).to_dict()


def _statistics_items(merged) -> dict[str, str]:
    """The store paths of the calibration statistics files the merge read (its manifest's), each
    checked to still hold the bytes the merge read, so that verify can restore them."""
    from merge.errors import StaleStatistics
    from merge.manifest import MANIFEST_NAME, sha256_file

    manifest = json.loads((Path(merged.out_dir) / MANIFEST_NAME).read_text())
    items = {}
    for stat in manifest.get("statistics", []):
        path = Path(stat["path"])
        if not path.is_file() or sha256_file(path) != stat["sha256"]:
            raise StaleStatistics(f"{path}: statistics file changed or removed since the merge read it "
                                  f"(sha256 {stat['sha256'][:16]}); run again")
        items[statistics_path(stat["sha256"])] = str(path)
    return items


def _version_and_register(name, recipe, merged, parent_ids, audit, evaluation, judged_by, requested_by):
    """Version the artifacts in DVC, build the lineage and register the candidate (under the lock)."""
    settings = get_settings()
    with tempfile.TemporaryDirectory() as tmp:
        eval_json = Path(tmp) / "evaluation.json"
        eval_json.write_text(json.dumps(evaluation, indent=2, sort_keys=True))
        plots = tasks.draw_plots(evaluation, tmp, "evaluation")
        audit_json = Path(tmp) / "audit.json"
        audit_json.write_text(audit.to_json())
        items = {parent_path(cid): p for p, cid in parent_ids.items()}
        items |= _statistics_items(merged)
        items |= {f"models/{merged.content_id}": merged.out_dir,
                  f"reports/{merged.content_id}/evaluation.json": str(eval_json),
                  f"reports/{merged.content_id}/audit.json": str(audit_json)}
        # The journal of this registration (registry/journal.py); the service keeps its own.
        attempt = None if settings.service_url else journal.begin(settings.audit_log_path, name, merged.content_id)
        try:
            info, revision = _register_journaled(attempt, name, recipe, merged, audit, evaluation, judged_by,
                                                 requested_by, items, eval_json, audit_json, plots)
        except BaseException:
            if attempt is not None:
                from registry.mlflow_registry import abandon

                abandon(settings.tracking_uri, settings.audit_log_path, attempt)
            raise
    return info, revision


def _register_journaled(attempt, name, recipe, merged, audit, evaluation, judged_by, requested_by, items, eval_json,
                        audit_json, plots):
    """Version the artifacts (journal step ``artifacts``), build the lineage, register."""
    from registry.lineage import build_lineage

    settings = get_settings()
    md5s, revision = tasks.version_artifacts(str(settings.store_dir), settings.dvc_remote_url,
                                             items, f"{name}: {merged.content_id[:12]} by {requested_by}",
                                             settings.dvc_remote_endpoint)
    if attempt is not None:
        attempt.advance("artifacts", dvc_revision=revision)
    for stage_outs in lock_md5s(settings.recipe_base_dir or Path.cwd()).values():
        md5s = {**stage_outs, **md5s}
    lineage = build_lineage(
        name=name, recipe_text=recipe.text, recipe_sha256=recipe.sha256, recipe_base_dir=recipe.base_dir,
        merge_manifest=json.loads((Path(merged.out_dir) / "mergeops.manifest.json").read_text()),
        audit_report=audit, requested_by=requested_by,
        # retention is undefined (None) where every parent scored 0; the record keeps numbers only
        evaluation_report={**evaluation, "retention": {d: v for d, v in evaluation.get("retention", {}).items()
                                                       if v is not None}},
        seed=recipe.seed, dvc_revision=revision, dvc_md5s=md5s,
        references=_references(recipe), revisions=_revisions(audit),
        suite=judged_by["suite"], policy=judged_by["policy"],
    )
    info = tasks.register(settings.tracking_uri, name, merged.out_dir, lineage, str(settings.audit_log_path),
                          [str(eval_json), *plots], [str(audit_json)], settings.artifact_root,
                          str(settings.signing_key_path),
                          {p.content_id: p.license_link for p in audit.parents if p.license_link},
                          str(attempt.path) if attempt is not None else None)
    return info, revision


def _references(recipe) -> dict[str, str]:
    """{parent path as the manifest may hold it: the reference as the recipe wrote it}."""
    out = {}
    for ref in recipe.model_refs():
        out[str(recipe.path_of(ref))] = out[str(recipe.path_of(ref).resolve())] = ref
    return out


def _revisions(audit) -> dict[str, str]:
    out = {}
    for parent in audit.parents:
        if parent.revision:
            out[parent.resolved_path] = out[str(Path(parent.resolved_path).resolve())] = parent.revision
    return out


def _champion_scores(tracking_uri: str, champion) -> dict[str, float] | None:
    if champion is None or "champion" not in champion.aliases:
        return None
    from registry.mlflow_registry import load_lineage

    return dict(load_lineage(tracking_uri, champion).evaluation.scores) or None


# -- Prefect artifacts: what a reviewer reads in the UI ------------------------------------------
def _gate_table(name: str, gates: list[dict]) -> None:
    rows = [{k: g.get(k) for k in ("gate", "observed", "threshold", "passed", "reason")} for g in gates]
    create_table_artifact(rows or [{"gate": "(no gates in the policy)"}], key="gate-decisions",
                          description=f"Gate decisions for {name}")


def _summary(name: str, version: str | None, merged, evaluation: dict, *, status: str) -> str:
    retention = evaluation.get("retention", {})
    lines = [f"# {name}" + (f" v{version}" if version else ""), "", f"**Status:** {status}", "",
             f"- merged content id: `{merged.content_id}`",
             f"- merge: {'reused from cache' if merged.cached else 'computed'} (`{merged.out_dir}`)"]
    runs = evaluation.get("runs", [])
    if runs:
        ran = [r["model"] for r in runs if r.get("lm_eval") == "ran"]
        lines.append(f"- evaluation: lm-eval ran for {', '.join(ran) or 'no model'}; "
                     f"{len(runs) - len(ran)} of {len(runs)} models from the cache")
    if evaluation.get("normalized_average") is not None:
        lines.append(f"- normalized average: {evaluation['normalized_average']:.3f}")
    scores = evaluation.get("scores") or {}  # {domain: {model: score}}
    if scores:
        models = list(next(iter(scores.values())))
        lines += ["", "| domain | " + " | ".join(models) + " | retention |",
                  "| --- " * (len(models) + 2) + "|"]
        lines += [f"| {d} | " + " | ".join(_num(row.get(m)) for m in models) + f" | {_num(retention.get(d))} |"
                  for d, row in sorted(scores.items())]
    failed = [g for g in evaluation.get("gates", []) if not g.get("passed")]
    lines += ["", f"Gates: {len(evaluation.get('gates', [])) - len(failed)} passed, {len(failed)} failed"]
    lines += [f"- **{g['gate']}**: {g.get('reason', '')}" for g in failed]
    text = "\n".join(lines)
    create_markdown_artifact(text, key="merge-summary", description=f"{name}: {status}")
    return text


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _link(tracking_uri: str, name: str, version: str) -> None:
    ui = tracking_uri if tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    create_link_artifact(f"{ui}/#/models/{name}/versions/{version}", link_text=f"{name} v{version} in MLflow",
                         key="mlflow-version",
                         description=f"MLflow model version (tracking URI {tracking_uri})")
