"""Re-merge when a parent publishes new bytes: one new candidate per real change, never a promotion.

For each watched recipe: re-resolve its parents to content ids now, and compare them with the
baseline (the champion's lineage, else the latest candidate's). Nothing changed, or a version with
exactly these parents and this recipe already exists: no run, no version. Otherwise write a
``remerge_triggered`` audit-log entry and run the pipeline to a new candidate.

Two watches at once (a cron tick and an event, two machines on one shared home) take the same
per-recipe file lock and re-check "does a version with these parents exist" under it, so the second
finds the first one's version and does nothing.

``mergeops watch`` serves ``watch_flow`` with a cron schedule and a deployment trigger on the
``mergeops.parent.updated`` event (emitted by ``emit_parent_updated``); ``--once`` runs one pass.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.config import CONFIG_NAME, WATCH_CRON, WatchEntry, load_config
from flows.errors import WatchConfigError
from flows.governance import Governance
from flows.locks import model_lock
from flows.runtime import UI_ONLY
from flows.pipeline import merge_pipeline, model_name, parent_dirs
from flows.settings import get_settings
from flows.versions import baseline, find_same, parent_ids
from merge.bounded import regular_file
from merge.errors import CheckFailed, MergeopsError, UsageError
from merge.manifest import content_id

PARENT_UPDATED = "mergeops.parent.updated"


def watched(recipes: list[str] | None = None, *, policy: str | None = None, suite: str | None = None,
            zoo: str | None = None, requested_by: str | None = None) -> list[WatchEntry]:
    """What a pass watches, each recipe with its settings resolved: an option given here wins, then
    the recipe's entry in mergeops.yaml, then the config's defaults. ``recipes`` replaces the
    config's list (each then with the config's defaults). Unnamed, the requester is "mergeops-watch"
    on an embedded store; with a governance service it is left unset, so the signed-in account (the
    worker's) requests the re-merge, as the service accepts no other name."""
    settings = get_settings()
    if recipes:
        entries = [WatchEntry(recipe=str(Path(r).resolve())) for r in recipes]
    else:
        entries = load_config(settings.config_file).watched() if settings.config_file else []
    if not entries:
        where = settings.config_file or f"no {CONFIG_NAME} in {Path.cwd()} or above"
        raise WatchConfigError(f"nothing to watch: pass --recipe RECIPE.yaml or list recipes under `watch:` "
                               f"in {CONFIG_NAME} ({where})")
    for entry in entries:  # a regular file: a FIFO or /dev/zero is refused before it is opened
        try:
            regular_file(Path(entry.recipe), what="watched recipe")
        except UsageError as exc:
            raise WatchConfigError(f"{exc} ({settings.config_file or '--recipe'})") from None
    default_requester = None if settings.service_url else "mergeops-watch"
    return [WatchEntry(recipe=e.recipe, policy=policy or e.policy, suite=suite or e.suite or settings.suite,
                       zoo=zoo or e.zoo or settings.zoo,
                       requested_by=requested_by or e.requested_by or default_requester) for e in entries]


def plan(recipe_path: str, tracking_uri: str) -> dict:
    """What a pass would do for one recipe, from the bytes on disk and the registry (no side effects)."""
    from merge.hub import display_name
    from merge.recipe import load_recipe

    path = Path(recipe_path)
    recipe = load_recipe(path, get_settings().recipe_base_dir)
    name = model_name(recipe, path)
    current = {d: content_id(Path(d)) for d in parent_dirs(recipe)}
    base = baseline(tracking_uri, name)
    previous = parent_ids(base) if base else []
    changed = sorted(display_name(Path(d)) for d, cid in current.items() if cid not in previous)
    same = find_same(tracking_uri, name, recipe_sha256=recipe.sha256, parent_content_ids=list(current.values()))
    if same is not None:
        reason = f"{name} v{same.version} already has these parents"
    elif base is None:
        reason = "no version registered yet"
    else:
        reason = f"changed since {name} v{base.version}: {', '.join(changed) or 'recipe'}"
    return {"recipe": str(path), "name": name, "run": same is None, "reason": reason, "changed": changed,
            "baseline": base.version if base else None, "parents": current}


class RemergeStopped(CheckFailed):
    """A watch pass in which at least one re-merge stopped: the flow run ends Failed (exit 1), after
    every watched recipe had its turn; ``outcomes`` holds what was done for each."""

    def __init__(self, message: str, outcomes: list[dict] | None = None):
        super().__init__(message)
        self.outcomes = outcomes or []


@flow(name="mergeops-watch", log_prints=True)
def watch_flow(recipes: list[str] | None = None, policy_path: str | None = None, suite: str | None = None,
               zoo_dir: str | None = None, requested_by: str | None = None) -> list[dict]:
    """One pass over the watched recipes; returns what was done for each. When a re-merge stopped
    (audit, gate, a refused requester) the others still run, then the flow run fails with
    ``RemergeStopped``, so a schedule's failed runs show in the Prefect UI and its notifications."""
    log = get_run_logger()
    settings = get_settings()
    outcomes = []
    for entry in watched(recipes, policy=policy_path, suite=suite, zoo=zoo_dir, requested_by=requested_by):
        first = plan(entry.recipe, settings.tracking_uri)
        with model_lock(settings.home_dir, first["name"]):
            decision = plan(entry.recipe, settings.tracking_uri)  # again, under the lock
            if not decision["run"]:
                log.info("%s: no re-merge (%s)", decision["name"], decision["reason"])
                outcomes.append({**decision, "status": "unchanged"})
                continue
            Governance(settings).record(
                decision["name"], None, "remerge_triggered", recipe=decision["recipe"], reason=decision["reason"],
                changed=decision["changed"], baseline=decision["baseline"],
                parents=sorted(decision["parents"].values()))
            log.info("%s: re-merging (%s)", decision["name"], decision["reason"])
            # Never waits for a reviewer and never promotes: the new version stays a candidate.
            state = merge_pipeline(entry.recipe, policy_path=entry.policy, requested_by=entry.requested_by,
                                   suite=entry.suite, zoo_dir=entry.zoo, wait_for_approval=False, return_state=True)
            if state.is_completed():
                outcomes.append({**decision, **state.result()})
            else:
                error = state.result(raise_on_failure=False)
                message = str(error) if isinstance(error, MergeopsError) else state.message
                log.warning("%s: re-merge stopped: %s", decision["name"], message, extra=UI_ONLY)
                outcomes.append({**decision, "status": "failed", "message": message})
    stopped = [o for o in outcomes if o.get("status") == "failed"]
    if stopped:
        raise RemergeStopped("; ".join(f"{o['name']}: re-merge stopped: {o['message']}" for o in stopped), outcomes)
    return outcomes


def deployment(recipes: list[str] | None, policy_path: str | None, cron: str = WATCH_CRON, *,
               suite: str | None = None, zoo_dir: str | None = None):
    """The watch as a deployment: a cron schedule plus a trigger on ``mergeops.parent.updated``.
    Settings not given here are read from mergeops.yaml at each run, so editing it needs no restart."""
    watched(recipes, policy=policy_path, suite=suite, zoo=zoo_dir)  # refuse to serve nothing
    params = {"recipes": [str(Path(r).resolve()) for r in recipes] if recipes else None,
              "policy_path": policy_path, "suite": suite, "zoo_dir": zoo_dir}
    return watch_flow.to_deployment(name="mergeops-watch", cron=cron, triggers=[parent_updated_trigger(params)],
                                    parameters=params,
                                    description="Re-merge watched recipes when a parent's content id changes")


def parent_updated_trigger(params: dict):
    """Run the watch, with ``params``, on each ``mergeops.parent.updated`` event."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(expect={PARENT_UPDATED}, match={"prefect.resource.id": "mergeops.model.*"},
                                  parameters=params)


def serve(recipes: list[str] | None, policy_path: str | None, cron: str = WATCH_CRON, *,
          suite: str | None = None, zoo_dir: str | None = None) -> None:
    """Serve the watch deployment until interrupted (a Prefect server runs the event trigger)."""
    from prefect import serve as serve_deployments

    serve_deployments(deployment(recipes, policy_path, cron, suite=suite, zoo_dir=zoo_dir))


def emit_parent_updated(model_dir: Path) -> None:
    """Announce new bytes in a parent dir; a served watch reacts to it."""
    from prefect.events import emit_event

    cid = content_id(Path(model_dir))
    emit_event(event=PARENT_UPDATED, resource={"prefect.resource.id": f"mergeops.model.{cid}",
                                               "mergeops.path": str(Path(model_dir).resolve())})
