"""`mergeops evolve`: parse arguments, call ``flows.evolve.evolve`` (or, with --register, the
``evolve`` flow of ``flows.evolve_flow``), print the result."""

from __future__ import annotations

from pathlib import Path

import click

from flows.cli_options import suite_option, zoo_option


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Output directory: recipe.yaml, model/, search.json and the checkpoint (rerun to resume).")
@zoo_option
@suite_option
@click.option("--algorithm", type=click.Choice(["m2n2", "cmaes", "random"]), default="cmaes", show_default=True,
              help="m2n2: archive + split-point crossover; cmaes / random: the recipe's parameters per layer block.")
@click.option("--budget", type=int, default=None,
              help="Candidates to merge and score in all, resumed ones included [default: 600].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the search.")
@click.option("--objective", type=click.Choice(["retention", "mean"]), default="retention", show_default=True,
              help="retention: the least per-domain score over the best parent's there (what the gates check); "
                   "mean: the mean dev score.")
@click.option("--granularity", type=click.Choice(["block", "kind"]), default="block", show_default=True,
              help="cmaes / random: tune each parameter per layer block, or also per tensor kind (finer; "
                   "needs a larger --budget).")
@click.option("--dev-size", type=int, default=None,
              help="Dev prompts per domain to score on [default: 300 for a zoo domain; every row of a suite's "
                   "dev file].")
@click.option("--register", "register", metavar="NAME",
              help="Run as the Prefect flow: log the search as an MLflow run (experiment mergeops-evolve), "
                   "then send the winner through audit, merge, evaluation, gates and registration as NAME.")
@click.option("--policy", type=click.Path(exists=True, dir_okay=False),
              help="Gate policy YAML for --register [default: as for `mergeops run`].")
@click.option("--requested-by", help="Who asks for the registration (default: the current user).")
def evolve(recipe: Path, out: Path, zoo_dir: str | None, suite: str | None, algorithm: str, budget: int | None,
           seed: int, objective: str, granularity: str, dev_size: int | None, register: str | None,
           policy: str | None, requested_by: str | None) -> None:
    """Search merges of RECIPE's parents, scored in memory on a dev split, and write the winner.

    RECIPE is an ordinary recipe naming the parents (and base); the search starts from it. Each
    candidate is merged in memory and scored by greedy exact match on dev prompts of the suite's
    zoo domains, disjoint from their eval split. --out receives recipe.yaml (the winner as a
    multi-stage recipe: `mergeops merge OUT/recipe.yaml` rebuilds OUT/model byte for byte),
    model/, search.json (per generation: best, mean, diversity) and a checkpoint; the same
    command again resumes where it stopped, or extends a finished search to a larger --budget.
    With --register the winner is evaluated on the held-out eval split and gated like any merge;
    exit 1 when the audit or a gate stops it (nothing is registered).

    \b
    Example:
      mergeops evolve recipes/demo.yaml --zoo data/zoo --out /tmp/evolved --budget 40
      mergeops evolve recipes/demo.yaml --zoo data/zoo --out /tmp/evolved --register demo-evolved
    """
    from flows.evolve import DEFAULT_BUDGET, dev_records
    from flows.evolve import evolve as run_evolve
    from flows.settings import get_settings
    from merge.errors import UsageError
    from merge.recipe import load_recipe

    settings = get_settings()
    zoo = zoo_dir or settings.zoo
    budget = DEFAULT_BUDGET if budget is None else budget
    if register is not None:
        if budget < 1:
            raise UsageError(f"--budget must be at least 1 candidate, got {budget}")
        from flows.cli_pipeline import _check_recipes, _prefect_ready, _print_result

        _prefect_ready(lambda: _check_recipes(str(recipe)))
        from flows.evolve_flow import evolve_flow

        done = evolve_flow(str(recipe), str(out), zoo_dir=zoo, suite=suite, algorithm=algorithm, budget=budget,
                           seed=seed, objective=objective, granularity=granularity, dev_size=dev_size,
                           register_as=register, policy_path=policy, requested_by=requested_by)
        click.echo(f"evolved {out}/model  content_id {done['content_id']}  {objective} {done['objective']:.3f}  "
                   f"MLflow run {done['search_run_id']}")
        _print_result(done["pipeline"])
        return
    parsed = load_recipe(recipe, settings.recipe_base_dir)
    records = dev_records(suite or settings.suite, Path(zoo) if zoo else None, dev_size)
    scorer_dir = parsed.path_of(parsed.base_model or parsed.model_refs()[0])
    result = run_evolve(parsed, out, records=records, scorer_dir=scorer_dir, algorithm=algorithm,
                        budget=budget, seed=seed, objective=objective, granularity=granularity)
    resumed = f" ({result.replayed} resumed)" if result.replayed else ""
    click.echo(f"evolved {out}/model  content_id {result.content_id}  {objective} {result.objective:.3f}  "
               f"(dev mean {result.dev_score:.3f})  "
               f"{result.evaluations} candidates{resumed}")
