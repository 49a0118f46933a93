"""``mergeops deploy``: the pipeline, watch and evolve flows as deployments on a Prefect work pool.

Each deployment names its flow by module (``flows.pipeline.merge_pipeline``): workers run the
mergeops they have installed, no code is pulled. Its flow runs start in the project's folder (the
folder of mergeops.yaml, else the working directory), so they read their settings as ``mergeops
run`` does there: the environment over mergeops.yaml over the embedded defaults. Settings travel in
mergeops.yaml (``MERGEOPS_CONFIG`` names it for the runs); credentials stay in each worker's
environment and never reach the Prefect database. Workers must see the project folder at the same
path (one machine, or a shared file system), as Dask workers must.

A worker whose machine dies takes its flow runs with it, and Prefect would show them Running for
ever. The runs send a heartbeat every ``HEARTBEAT_S`` seconds and an automation marks a run of these
deployments Crashed when three in a row are missing. Nothing such a run did is half-registered:
registration is journaled (registry/journal.py), and the next run or ``mergeops repair`` settles it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from flows.config import ENV_VAR, WATCH_CRON
from flows.settings import Settings
from merge.errors import UsageError

DEFAULT_NAME = "mergeops"
HEARTBEAT_S = 30  # Prefect's floor; its default (180 s) would leave a dead run Running for 9 minutes
_FLOWS = {  # entrypoint: description
    "flows.pipeline.merge_pipeline": "Run a recipe through audit, merge, evaluation and gates to a candidate",
    "flows.watch.watch_flow": "Re-merge watched recipes (mergeops.yaml `watch:`) when a parent's content id changes",
    "flows.evolve_flow.evolve_flow": "Search merges of a recipe's parents; with register_as, the winner through the pipeline",
}
# Settings a shell may hold that a deployment does not carry (its runs read mergeops.yaml and their
# worker's environment instead).
_NOT_CARRIED = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@dataclass(frozen=True)
class Deployed:
    name: str  # FLOW/DEPLOYMENT, as `prefect deployment run` takes it
    id: str
    schedule: str | None


def deploy(settings: Settings, pool: str, *, name: str = DEFAULT_NAME, cron: str = WATCH_CRON) -> list[Deployed]:
    """Create or update the three deployments on ``pool`` and the crashed-run automation."""
    if not settings.prefect_server:
        raise UsageError("deployments live on a Prefect server: set PREFECT_API_URL (e.g. "
                         "http://prefect:4200/api) to the server your workers poll")
    from prefect.exceptions import PrefectHTTPStatusError

    from flows.errors import PrefectUnavailable

    try:
        return _deploy(settings, pool, name, cron)
    except PrefectHTTPStatusError as exc:  # e.g. a cron the server refuses: one line, not a traceback
        detail = exc.response.text[:300] if exc.response is not None else str(exc)
        raise PrefectUnavailable(f"the Prefect server refused the deployment: {detail}") from None


def project_root(settings: Settings) -> Path:
    """Where the deployments' runs start: the folder of mergeops.yaml, else this one."""
    return settings.recipe_base_dir or Path.cwd()


def _deploy(settings: Settings, pool: str, name: str, cron: str) -> list[Deployed]:
    from prefect import deploy as deploy_all
    from prefect import flow
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise UsageError(f"--cron {cron!r}: not a cron expression (e.g. '*/30 * * * *')") from None
    _check_pool(pool)
    root = project_root(settings)
    jobs = {"working_dir": str(root), "env": run_environment(settings)}
    deployments, schedules = [], []
    for entrypoint, description in _FLOWS.items():
        extra = {}
        if entrypoint == "flows.watch.watch_flow":
            from flows.watch import parent_updated_trigger

            extra = {"cron": cron, "triggers": [parent_updated_trigger({})]}
        loaded = flow.from_source(str(root), entrypoint=entrypoint)
        deployments.append(loaded.to_deployment(name=name, job_variables=jobs, description=description, **extra))
        schedules.append(extra.get("cron"))
    ids = deploy_all(*deployments, work_pool_name=pool, build=False, push=False, print_next_steps_message=False,
                     ignore_warnings=True)
    deployed = [Deployed(d.full_name, str(i), c) for d, i, c in zip(deployments, ids, schedules)]
    _crash_automation(name, [d.id for d in deployed])
    return deployed


def run_environment(settings: Settings) -> dict[str, str]:
    """What every flow run of the deployments gets beside its worker's environment: the quiet
    variables (flows/runtime.py), the heartbeat and the project config."""
    from flows.runtime import quiet_variables

    env = {**quiet_variables(), "DO_NOT_TRACK": "1", "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S)}
    if settings.config_file:
        env[ENV_VAR] = str(settings.config_file.resolve())
    return env


def not_carried() -> list[str]:
    """Settings in this shell's environment that the deployments' runs will not see."""
    return sorted(v for v in os.environ if v in _NOT_CARRIED or (v.startswith("MERGEOPS_") and v != ENV_VAR))


def _check_pool(pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_work_pool(pool)
        except ObjectNotFound:
            raise UsageError(f"no work pool {pool!r} on the Prefect server: create it with "
                             f"`prefect work-pool create {pool} --type process`") from None
    if found.type != "process":
        raise UsageError(f"work pool {pool!r} is of type {found.type}; mergeops deploys to process pools "
                         "(workers on machines that share the project folder)")


def _crash_automation(name: str, deployment_ids: list[str]) -> None:
    """Mark a run of these deployments Crashed when its heartbeats stop (the automation that
    Prefect's documentation gives for runs whose worker died), replacing an older one of this name."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    title = f"{name}: crashed when heartbeats stop"
    while True:
        try:
            Automation.read(name=title).delete()
        except ValueError:  # (Prefect's "not found")
            break
    ends = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    Automation(
        name=title,
        description=f"Flow runs of the {name} deployments whose worker died: no heartbeat for {3 * HEARTBEAT_S} s",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"}, expect={"prefect.flow-run.heartbeat", *ends},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.id": [f"prefect.deployment.{i}" for i in deployment_ids]},
            for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
            within=timedelta(seconds=3 * HEARTBEAT_S)),
        actions=[ChangeFlowRunState(state=StateType.CRASHED,
                                    message=f"no heartbeat for {3 * HEARTBEAT_S} s: its worker is gone")],
    ).create()
