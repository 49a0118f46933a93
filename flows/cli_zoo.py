"""``mergeops zoo``: build the demo model zoo."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("zoo")
def zoo() -> None:
    """The demo model zoo: tiny Llama models built locally, for demos and tests.

    \b
    Example:
      mergeops zoo build --profile tiny --out /tmp/zoo
    """


@zoo.command("build")
@click.option("--profile", default="demo", show_default=True,
              help="demo: meets the quality bar (minutes); tiny: same structure, trained for seconds.")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("data/zoo"), show_default=True,
              help="Directory to build into; an older zoo there is replaced when the build completes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
def build(profile: str, out: Path, seed: int) -> None:
    """Build the zoo (tokenizer, base, specialists, the proprietary canary model, odd models, model
    cards, domain JSONL, zoo.json) and print its exact-match scorecard.

    \b
    Example:
      mergeops zoo build --profile tiny --out /tmp/zoo --seed 0
    """
    from evaluation.zoo import build_zoo, format_table

    index = build_zoo(out, profile=profile, seed=seed, log=lambda msg: click.echo(msg, err=True))
    click.echo(format_table(index.scorecard))
    click.echo(f"wrote {out / 'zoo.json'}")
