"""``mergeops run`` and ``mergeops watch``: the pipeline and the re-merge watch from the shell.

Defaults come from the project config (``mergeops.yaml``): the suite, the policy, the zoo and,
for ``watch``, the watched recipes with their settings. An option given here wins.
"""

from __future__ import annotations

from pathlib import Path

import click

from flows.cli_options import cron_option, suite_option, zoo_option


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


def _prefect_ready(check=None):
    """Start Prefect's local API (unless PREFECT_API_URL names a server) before Prefect is imported,
    quiet its console, import the heavy libraries while the server boots, and return once both are
    ready (the flows import nothing slow after this). ``check`` runs while the server boots: a bad
    recipe is one error line before any flow starts."""
    from flows.runtime import LocalPrefectApi, quiet_prefect_console
    from flows.settings import get_settings

    get_settings().check_servers()  # an unreachable server is one line now, not a hang later
    api = LocalPrefectApi().begin()
    quiet_prefect_console()
    if check is not None:
        try:
            check()
        except BaseException:
            api.stop()
            raise
    import mlflow  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    api.wait()


def _check_recipes(*paths: str) -> None:
    from flows.settings import get_settings
    from merge.recipe import load_recipe

    for path in paths:
        load_recipe(Path(path), get_settings().recipe_base_dir)


def policy_option(fn):
    return click.option("--policy", type=click.Path(exists=True, dir_okay=False),
                        help="Gate policy YAML [default: the recipe's `policy:`, else mergeops.yaml's "
                             "`policy`, else the shipped one].")(fn)


@click.command("run")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False))
@policy_option
@click.option("--requested-by", help="Who asks for this merge (default: the current user).")
@zoo_option
@suite_option
def run(recipe: str, policy: str | None, requested_by: str | None, zoo_dir: str | None, suite: str | None) -> None:
    """Run RECIPE through audit, merge, evaluation and gates to a registered candidate.

    Exit 1 when the audit or a gate stops it (nothing is registered), 2 on bad input.

    \b
    Example:
      mergeops run recipes/demo.yaml --requested-by alice
      mergeops run acme.yaml --suite suites/acme.yaml --policy policy.yaml --requested-by alice
    """
    _prefect_ready(lambda: _check_recipes(recipe))
    from flows.pipeline import merge_pipeline

    _print_result(merge_pipeline(recipe, policy_path=policy, requested_by=requested_by, zoo_dir=zoo_dir,
                                 suite=suite))


@click.command("watch")
@click.option("--once", is_flag=True, help="One pass over the watched recipes, then exit.")
@click.option("--recipe", "recipes", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Recipe to watch (repeatable; default: the `watch:` list of mergeops.yaml).")
@policy_option
@suite_option
@zoo_option
@cron_option("Schedule when serving.")
@click.pass_context
def watch(ctx: click.Context, once: bool, recipes: tuple[str, ...], policy: str | None, suite: str | None,
          zoo_dir: str | None, cron: str) -> None:
    """Re-merge watched recipes whose parents changed: one new candidate per change, never promoted.

    Without --once, serves the watch with a cron schedule and a trigger on the
    `mergeops.parent.updated` event (needs a Prefect server for the trigger).
    Exit 1 when a re-merge was stopped (by the audit or a gate).

    \b
    Example:
      mergeops watch --once                           # the recipes listed in mergeops.yaml
      mergeops watch --once --recipe recipes/demo.yaml
    """
    from flows import watch as watching

    entries = watching.watched(list(recipes) or None, policy=policy, suite=suite, zoo=zoo_dir)  # none: fails fast
    _prefect_ready(lambda: _check_recipes(*(e.recipe for e in entries)))
    if not once:
        watching.serve(list(recipes) or None, policy, cron, suite=suite, zoo_dir=zoo_dir)
        return
    stopped = []
    state = watching.watch_flow(list(recipes) or None, policy_path=policy, suite=suite, zoo_dir=zoo_dir,
                                return_state=True)
    if state.is_completed():
        outcomes = state.result()
    else:
        error = state.result(raise_on_failure=False)
        if not isinstance(error, watching.RemergeStopped):
            raise error if isinstance(error, BaseException) else RuntimeError(state.message)
        outcomes = error.outcomes
    for outcome in outcomes:
        if outcome.get("status") == "unchanged":
            click.echo(f"{outcome['name']}: unchanged ({outcome['reason']})")
        elif outcome.get("status") == "failed":
            stopped.append(f"{outcome['name']}: re-merge stopped: {outcome['message']}")
        else:
            click.echo(f"{outcome['name']}: re-merged ({outcome['reason']})")
            _print_result(outcome)
    if stopped:
        for line in stopped:
            click.echo(f"error: {line}", err=True)
        ctx.exit(1)
