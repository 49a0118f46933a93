"""The pipeline's evaluation step: serial in the run's own process, or fanned out per model as Dask tasks.

Settings decide (flows/settings.py): ``dask_address`` names a Dask scheduler whose workers share the
models' and the cache's folders; ``evaluation_workers`` N > 1 without an address starts a local
cluster of N worker processes for the step; 1 (the default) keeps the serial ``evaluate`` task.

Fanned out, the step is a subflow run with prefect-dask's ``DaskTaskRunner``: it plans once
(evaluation/run.py ``plan_evaluation``: content ids, cards, suite), submits one ``evaluate-model``
task per model (each reads and writes the same content-addressed cache as the serial path), and
aggregates the outcomes in the plan's order with ``finish_evaluation``, so the report, the cache
files and the gate decisions are those of the serial path.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NONE

from flows import tasks
from flows.settings import Settings


def fans_out(settings: Settings) -> bool:
    return bool(settings.dask_address) or settings.evaluation_workers > 1


def task_runner(settings: Settings):
    """prefect-dask's runner for these settings: the scheduler at ``dask_address``, else a
    ``LocalCluster`` of ``evaluation_workers`` processes, one task at a time each, torch's threads
    split between them (a worker per core would otherwise fight over every core)."""
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    workers = settings.evaluation_workers
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
        "host": "127.0.0.1", "env": {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}})


@task(name="evaluate-model", retries=tasks._IO_RETRIES["retries"],
      retry_delay_seconds=tasks._IO_RETRIES["retry_delay_seconds"],
      retry_condition_fn=tasks._IO_RETRIES["retry_condition_fn"], cache_policy=NONE)
def evaluate_model(job):
    """One model's lm-eval scores and leakage records (evaluation/run.py ``evaluate_one``)."""
    from evaluation.run import evaluate_one

    return evaluate_one(job)


@flow(name="evaluate-per-model", log_prints=True)
def evaluate_per_model(models: list[tuple[str, str, str]], suite: str, zoo_dir: str | None, cache_dir: str,
                       policy: str | None, audit_verdict: str, champion_scores: dict[str, float] | None) -> dict:
    """``tasks.evaluate``'s result, each model scored by its own task on the flow's task runner."""
    from evaluation.run import ModelRef, finish_evaluation, plan_evaluation

    refs = [ModelRef(path=Path(p), role=role, name=name) for p, role, name in models]
    plan = plan_evaluation(refs, suite=suite, zoo_dir=Path(zoo_dir) if zoo_dir else None, cache_dir=Path(cache_dir),
                           policy=policy or "default")
    futures = [evaluate_model.with_options(task_run_name=f"evaluate-{job.ref.label}").submit(job)
               for job in plan.jobs]
    outcomes = [f.result() for f in futures]
    return finish_evaluation(plan, outcomes, audit_verdict=audit_verdict, license_verdict=audit_verdict,
                             champion_scores=champion_scores).to_json()


def run_evaluation(settings: Settings, models: list[tuple[str, str, str]], suite: str, zoo_dir: str | None,
                   cache_dir: str, policy: str | None, audit_verdict: str,
                   champion_scores: dict[str, float] | None) -> dict:
    """The evaluation report (DESIGN.md's ``--json`` keys), serial or fanned out as ``settings`` say."""
    args = (models, suite, zoo_dir, cache_dir, policy, audit_verdict, champion_scores)
    if not fans_out(settings):
        return tasks.evaluate(*args)
    return evaluate_per_model.with_options(task_runner=task_runner(settings))(*args)
