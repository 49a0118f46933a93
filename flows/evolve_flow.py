"""The evolutionary search as a Prefect flow: search → MLflow run → the governed pipeline.

``evolve_flow`` sequences three steps, each a task around one plain function: the search
(``flows.evolve.evolve``, resumable from OUT's checkpoint), its MLflow run in the experiment
``mergeops-evolve`` (``registry.search_runs``: params, per-generation metrics, ``recipe.yaml`` and
``search.json``) and, when ``register_as`` names a model, ``merge_pipeline`` on ``OUT/recipe.yaml``:
the winner is audited (its parents are the real models the stages start from), merged again from
its recipe, evaluated on the suite's held-out eval split (which the search never saw), gated and
registered with the alias ``candidate``, awaiting approval like any other merge. A refusal there
registers nothing and is tagged on the search's run.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.evolve import DEFAULT_BUDGET
from flows.pipeline import find_zoo_dir, merge_pipeline, parent_dirs
from flows.settings import get_settings


@task(name="evolve-search", cache_policy=NONE)
def search(recipe, out_dir: str, zoo_dir: str | None, suite: str | None, algorithm: str, budget: int, seed: int,
           dev_size: int | None, objective: str = "retention", granularity: str = "block") -> dict:
    from flows.evolve import dev_records, evolve

    records = dev_records(suite, Path(zoo_dir) if zoo_dir else None, dev_size)
    scorer_dir = recipe.path_of(recipe.base_model or recipe.model_refs()[0])
    result = evolve(recipe, Path(out_dir), records=records, scorer_dir=scorer_dir, algorithm=algorithm,
                    budget=budget, seed=seed, objective=objective, granularity=granularity,
                    progress=False)
    return {"content_id": result.content_id, "dev_score": result.dev_score, "objective": result.objective,
            "evaluations": result.evaluations,
            "replayed": result.replayed}


@task(name="log-search", cache_policy=NONE)
def log_search(out_dir: str, recipe_sha256: str, start_recipe_sha256: str, name: str) -> str:
    from registry.search_runs import log_search as log

    settings = get_settings()
    return log(settings.tracking_uri, Path(out_dir), recipe_sha256=recipe_sha256,
               start_recipe_sha256=start_recipe_sha256, name=name, artifact_location=settings.artifact_root)


@task(name="tag-search", cache_policy=NONE)
def tag_search(run_id: str, outcome: dict[str, str]) -> None:
    from registry.search_runs import tag_search as tag

    tag(get_settings().tracking_uri, run_id, outcome)


@flow(name="evolve", log_prints=True)
def evolve_flow(recipe_path: str, out_dir: str, zoo_dir: str | None = None, suite: str | None = None,
                algorithm: str = "cmaes", budget: int = DEFAULT_BUDGET, seed: int = 0, dev_size: int | None = None,
                objective: str = "retention", granularity: str = "block",
                register_as: str | None = None, policy_path: str | None = None, requested_by: str | None = None,
                wait_for_approval: bool = True, approval_timeout_s: int = 3600) -> dict:
    """Search merges of RECIPE's parents, log the search in MLflow and, with ``register_as``, send the
    winner through the pipeline under that model name. Unset settings come from mergeops.yaml as
    for ``merge_pipeline`` (the zoo: else the one the parents live in)."""
    from merge.recipe import load_recipe

    log = get_run_logger()
    settings = get_settings()
    recipe = load_recipe(Path(recipe_path), settings.recipe_base_dir)
    zoo = zoo_dir or settings.zoo or find_zoo_dir(parent_dirs(recipe))
    zoo = str(zoo) if zoo else None
    suite = suite or settings.suite
    found = search(recipe, out_dir, zoo, suite, algorithm, budget, seed, dev_size, objective, granularity)
    log.info("search: %d candidates (%d resumed), winner %s %.3f (dev mean %.3f), content id %s",
             found["evaluations"], found["replayed"], objective, found["objective"], found["dev_score"],
             found["content_id"][:12])
    evolved = load_recipe(Path(out_dir) / "recipe.yaml", recipe.base_dir)
    run_id = log_search(out_dir, evolved.sha256, recipe.sha256, evolved.name or Path(out_dir).name)
    outcome = {**found, "out_dir": str(out_dir), "search_run_id": run_id, "recipe_sha256": evolved.sha256}
    if not register_as:
        return outcome
    try:
        pipeline = merge_pipeline(str(Path(out_dir) / "recipe.yaml"), policy_path=policy_path,
                                  requested_by=requested_by, zoo_dir=zoo, suite=suite,
                                  wait_for_approval=wait_for_approval, approval_timeout_s=approval_timeout_s,
                                  name=register_as)
    except Exception as exc:
        tag_search(run_id, {"pipeline": f"stopped: {exc}"[:5000]})
        raise
    tag_search(run_id, {"registered": f"{pipeline['name']} v{pipeline['version']}", "pipeline": pipeline["status"]})
    return {**outcome, "pipeline": pipeline}
