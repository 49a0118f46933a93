"""`mergeops evolve`: parse arguments, call ``flows.evolve.evolve``, print the result."""

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
@click.option("--algorithm", type=click.Choice(["m2n2", "cmaes", "random"]), default="m2n2", show_default=True,
              help="m2n2: archive + split-point crossover; cmaes / random: the recipe's parameters per layer block.")
@click.option("--budget", type=int, default=None,
              help="Candidates to merge and score in all, resumed ones included [default: 120].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the search.")
def evolve(recipe: Path, out: Path, zoo_dir: str | None, suite: str | None, algorithm: str, budget: int | None,
           seed: int) -> None:
    """Search merges of RECIPE's parents, scored in memory on a dev split, and write the winner.

    RECIPE is an ordinary recipe naming the parents (and base); the search starts from it. Each
    candidate is merged in memory and scored by greedy exact match on dev prompts of the suite's
    zoo domains, disjoint from their eval split. --out receives recipe.yaml (the winner as a
    multi-stage recipe: `mergeops merge OUT/recipe.yaml` rebuilds OUT/model byte for byte),
    model/, search.json (per generation: best, mean, diversity) and a checkpoint; the same
    command again resumes where it stopped, or extends a finished search to a larger --budget.

    \b
    Example:
      mergeops evolve recipes/demo.yaml --zoo data/zoo --out /tmp/evolved --budget 40
    """
    from flows.evolve import DEFAULT_BUDGET, dev_records
    from flows.evolve import evolve as run_evolve
    from flows.settings import get_settings
    from merge.recipe import load_recipe

    settings = get_settings()
    zoo = zoo_dir or settings.zoo
    parsed = load_recipe(recipe, settings.recipe_base_dir)
    records = dev_records(suite or settings.suite, Path(zoo) if zoo else None)
    scorer_dir = parsed.path_of(parsed.base_model or parsed.model_refs()[0])
    result = run_evolve(parsed, out, records=records, scorer_dir=scorer_dir, algorithm=algorithm,
                        budget=DEFAULT_BUDGET if budget is None else budget, seed=seed)
    resumed = f" ({result.replayed} resumed)" if result.replayed else ""
    click.echo(f"evolved {out}/model  content_id {result.content_id}  dev score {result.dev_score:.3f}  "
               f"{result.evaluations} candidates{resumed}")
