"""The pipeline's merge cache is reused only while its bytes match its manifest."""

from __future__ import annotations

from pathlib import Path

from flows import tasks
from merge.recipe import parse_recipe
from merge.synthetic import write_llama

SHAPE = dict(hidden=32, layers=2, intermediate=64, vocab=64)


def test_a_damaged_cached_merge_is_merged_again_not_reused(tmp_path: Path) -> None:
    base = write_llama(tmp_path / "base", seed=0, **SHAPE)
    tuned = write_llama(tmp_path / "tuned", seed=1, base=base, **SHAPE)
    recipe = parse_recipe(f"merge_method: linear\nmodels:\n  - {{model: {base}, parameters: {{weight: 0.5}}}}\n"
                          f"  - {{model: {tuned}, parameters: {{weight: 0.5}}}}\ndtype: float32\n")
    first = tasks.merge_recipe.fn(recipe, "k1", str(tmp_path / "cache"))
    again = tasks.merge_recipe.fn(recipe, "k1", str(tmp_path / "cache"))
    assert (first.cached, again.cached, again.content_id) == (False, True, first.content_id)
    weights = Path(first.out_dir) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    redone = tasks.merge_recipe.fn(recipe, "k1", str(tmp_path / "cache"))
    assert (redone.cached, redone.content_id) == (False, first.content_id)
