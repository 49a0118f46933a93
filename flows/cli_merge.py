"""`mergeops merge` and `mergeops calibrate`: parse arguments, call one library function, print."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
# Plain paths: the library checks them (a directory, FIFO or device as the recipe; a file or a
# symbolic link as --out) and says what is wrong on one `error:` line, like every other bad input.
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="Output model directory (must not exist or be empty; not a symbolic link).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N] for the arithmetic.")
def merge(recipe: Path, out: Path, device: str) -> None:
    """Merge the parents of a mergekit-compatible RECIPE into --out.

    The whole recipe and every parent's headers are checked before any weight is read; the output
    is written to a temp dir and renamed into place with mergeops.manifest.json (content id).
    A parent is a directory or a Hugging Face repo id, ORG/NAME[@REVISION], read offline from the
    local Hugging Face cache (HF_HUB_CACHE or HF_HOME). Relative directories start at the project
    root (the folder of mergeops.yaml), else at the working directory.

    \b
    Example:
      mergeops merge recipes/demo.yaml --out /tmp/merged
    """
    from flows.settings import get_settings
    from merge.recipe import load_recipe
    from merge.run import run_merge

    result = run_merge(load_recipe(recipe, get_settings().recipe_base_dir), out, device=device)
    click.echo(f"merged {out}  content_id {result.content_id}")


@click.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--data", "data", required=True, multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration JSONL with {'prompt', 'target'} lines (e.g. a zoo domain's train.jsonl); with "
                   "--kind sequential, one per model of the recipe, in its order.")
@click.option("--kind", type=click.Choice(["fisher", "gram", "sequential"]), required=True,
              help="fisher: diagonal Fisher (for merge_method: fisher); gram: RegMean Gram matrices; sequential: "
                   "RegMean statistics of a whole regmean RECIPE, each layer measured with the layers before it "
                   "merged (written to each model's `statistics` path).")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Statistics file (.safetensors) for a recipe's `statistics` parameter (fisher, gram).")
@click.option("--samples", default=32, show_default=True, help="Calibration examples to use (per model).")
def calibrate(source: Path, data: tuple[Path, ...], kind: str, out: Path | None, samples: int) -> None:
    """Compute calibration statistics for the fisher and regmean merge methods.

    SOURCE is a model directory (fisher, gram) or, for --kind sequential, a regmean recipe.

    \b
    Example:
      mergeops calibrate data/zoo/models/sort --data data/zoo/domains/sort/train.jsonl \\
          --kind fisher --out /tmp/sort.fisher.safetensors
      mergeops calibrate recipes/demo-regmean-sequential.yaml --kind sequential --samples 256 \\
          --data data/zoo/domains/reverse/train.jsonl --data data/zoo/domains/sort/train.jsonl \\
          --data data/zoo/domains/swap/train.jsonl
    """
    from merge.errors import UsageError

    if kind == "sequential":
        from evaluation.sequential_calibration import compute_sequential
        from flows.settings import get_settings
        from merge.recipe import load_recipe

        if out is not None:
            raise UsageError("--kind sequential writes each model's `statistics` path of the recipe; drop --out")
        if source.is_dir():
            raise UsageError(f"{source}: --kind sequential takes a regmean recipe, not a model directory")
        recipe = load_recipe(source, get_settings().recipe_base_dir)
        compute_sequential(recipe, list(data), samples=samples)
        for path in recipe.statistics_files():
            click.echo(f"wrote {path}")
        return
    from evaluation.calibration import compute_statistics

    if out is None or len(data) != 1:
        raise UsageError(f"--kind {kind} takes one model directory, one --data and --out")
    path = compute_statistics(source, data[0], kind=kind, out=out, samples=samples)
    click.echo(f"wrote {path}")
