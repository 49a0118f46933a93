"""``mergeops run`` and ``mergeops watch``: the pipeline and the re-merge watch from the shell."""

from __future__ import annotations

import click


def _print_result(result: dict) -> None:
    """The run's summary (the same markdown as its Prefect artifact), then the state and what next."""
    if result.get("summary"):
        click.echo(result["summary"] + "\n")
    click.echo(f"{result['name']} v{result['version']}: {result['status'].replace('_', ' ')}")
    if result.get("dvc_revision"):
        click.echo(f"  artifacts in DVC at revision {result['dvc_revision']}")
    if result["status"] == "awaiting_approval":
        click.echo(f"next: mergeops approve {result['name']} {result['version']} --reviewer WHO "
                   f"(someone other than the requester)")


@click.command("run")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@click.option("--policy", type=click.Path(exists=True, dir_okay=False), help="Gate policy YAML (default: shipped).")
@click.option("--requested-by", help="Who asks for this merge (default: the current user).")
@click.option("--zoo", "zoo_dir", type=click.Path(exists=True, file_okay=False),
              help="Zoo dir with the evaluation domains (default: the parents' zoo).")
@click.option("--suite", default="zoo", show_default=True, help="Evaluation suite: a shipped name or a YAML file.")
def run(recipe: str, policy: str | None, requested_by: str | None, zoo_dir: str | None, suite: str) -> None:
    """Run RECIPE through audit, merge, evaluation and gates to a registered candidate.

    Exit 1 when the audit or a gate stops it (nothing is registered), 2 on bad input.

    \b
    Example:
      mergeops run recipes/demo.yaml --requested-by alice
    """
    from flows.pipeline import merge_pipeline

    _print_result(merge_pipeline(recipe, policy_path=policy, requested_by=requested_by, zoo_dir=zoo_dir,
                                 suite=suite))


@click.command("watch")
@click.option("--once", is_flag=True, help="One pass over the watched recipes, then exit.")
@click.option("--recipe", "recipes", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Recipe to watch (repeatable; default: the `watch:` list in params.yaml).")
@click.option("--policy", type=click.Path(exists=True, dir_okay=False), help="Gate policy YAML for re-merges.")
@click.option("--suite", default="zoo", show_default=True, help="Evaluation suite for re-merges.")
@click.option("--zoo", "zoo_dir", type=click.Path(exists=True, file_okay=False),
              help="Zoo dir with the evaluation domains (default: the parents' zoo).")
@click.option("--cron", default="*/30 * * * *", show_default=True, help="Schedule when serving.")
def watch(once: bool, recipes: tuple[str, ...], policy: str | None, suite: str, zoo_dir: str | None,
          cron: str) -> None:
    """Re-merge watched recipes whose parents changed: one new candidate per change, never promoted.

    Without --once, serves the watch with a cron schedule and a trigger on the
    `mergeops.parent.updated` event (needs a Prefect server for the trigger).

    \b
    Example:
      mergeops watch --once --recipe recipes/demo.yaml
    """
    from flows import watch as watching

    if not once:
        watching.serve(list(recipes) or None, policy, cron, suite=suite, zoo_dir=zoo_dir)
        return
    for outcome in watching.watch_flow(list(recipes) or None, policy_path=policy, suite=suite, zoo_dir=zoo_dir):
        if outcome.get("status") == "unchanged":
            click.echo(f"{outcome['name']}: unchanged ({outcome['reason']})")
        elif outcome.get("status") == "failed":
            click.echo(f"{outcome['name']}: re-merge stopped: {outcome['message']}")
        else:
            click.echo(f"{outcome['name']}: re-merged ({outcome['reason']})")
            _print_result(outcome)
