"""Options shared by several commands, declared once (their defaults come from mergeops.yaml)."""

from __future__ import annotations

import click

from flows.config import WATCH_CRON

suite_option = click.option(
    "--suite", default=None, metavar="NAME|FILE",
    help="A suite YAML file with your own domains (README, Evaluation and gates), or a shipped zoo suite "
         "(zoo, zoo-full; these need a zoo) [default: mergeops.yaml's `suite`, else zoo].")

zoo_option = click.option(
    "--zoo", "zoo_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
    help="The zoo, for suites with zoo domains [env MERGEOPS_ZOO; default: mergeops.yaml's `zoo`; run and "
         "watch also look for the zoo the parents live in].")


def cron_option(help: str):
    """``--cron`` for the watch's schedule (served by `mergeops watch`, deployed by `mergeops deploy`)."""
    return click.option("--cron", default=WATCH_CRON, show_default=True, help=help)
