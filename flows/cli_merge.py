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
@click.argument("model_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--data", "data", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration JSONL with {'prompt', 'target'} lines (e.g. a zoo domain's train.jsonl).")
@click.option("--kind", type=click.Choice(["fisher", "gram"]), required=True,
              help="fisher: diagonal Fisher (for merge_method: fisher); gram: RegMean Gram matrices.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Statistics file (.safetensors) for a recipe's `statistics` parameter.")
@click.option("--samples", default=32, show_default=True, help="Calibration examples to use.")
def calibrate(model_dir: Path, data: Path, kind: str, out: Path, samples: int) -> None:
    """Compute calibration statistics of MODEL_DIR for the fisher and regmean merge methods.

    \b
    Example:
      mergeops calibrate data/zoo/models/sort --data data/zoo/domains/sort/train.jsonl \\
          --kind fisher --out /tmp/sort.fisher.safetensors
    """
    from evaluation.calibration import compute_statistics

    path = compute_statistics(model_dir, data, kind=kind, out=out, samples=samples)
    click.echo(f"wrote {path}")
