"""The demo merge the zoo is built for, scored into the zoo's own scorecard.

``demo-merge.yaml`` (next to this file) is the shipped recipe ``recipes/demo.yaml`` with model
paths relative to the zoo directory; a test keeps the two the same. The zoo build merges its
fresh specialists with it and adds the merged model's row to the scorecard, so ``zoo.json`` holds
the evidence that the zoo's specialists merge, next to the specialists' own scores.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from evaluation.zoo.scorecard import score_models
from evaluation.zoo_source import ScoreRow
from merge.recipe import parse_recipe
from merge.run import run_merge

DEMO_RECIPE = Path(__file__).with_name("demo-merge.yaml")
DEMO_MERGE = "demo-merge"


def score_demo_merge(zoo_dir: Path, domains: list[str]) -> list[ScoreRow]:
    """Merge ``zoo_dir``'s models with the demo recipe into a scratch dir, score it, remove it."""
    recipe = parse_recipe(DEMO_RECIPE.read_text(encoding="utf-8"), base_dir=zoo_dir)
    scratch = zoo_dir / f".{DEMO_MERGE}"
    try:
        run_merge(recipe, scratch, progress=False)
        return score_models({DEMO_MERGE: scratch}, zoo_dir, domains)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
