"""How much a recipe may name, checked on the parsed YAML before pydantic validates any of it.

A hostile recipe can be small on disk and huge once parsed (YAML anchors repeated across
``slices x sources``), or simply list a million models; validating that with pydantic costs
seconds and gigabytes. The caps below are far above any real recipe and each refusal says which
count was too large, so a user who really needs more knows what they hit.
"""

from __future__ import annotations

from typing import Any

from merge.errors import RecipeError

# The largest published mergekit recipes name a few dozen parents; evolutionary merges a few hundred.
MAX_MODELS = 1024
# A frankenmerge has at most a slice per output layer (a few hundred for the deepest models).
MAX_SLICES = 1024
# Sources summed over every slice (a slice usually has 1-3).
MAX_SOURCES = 4096
# Every value of the parsed document, aliases expanded: parents x parameters x per-layer gradients
# of a real recipe stay in the tens of thousands.
MAX_VALUES = 200_000


def _count(doc: Any, limit: int) -> int:
    """Values in ``doc`` counted as if every alias were a copy; stops counting past ``limit``."""
    seen, stack = 0, [doc]
    while stack and seen <= limit:
        node = stack.pop()
        seen += 1
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return seen


def _entries(doc: dict, key: str) -> list:
    value = doc.get(key)
    return value if isinstance(value, list) else []


def check_size(doc: dict) -> None:
    """Raise RecipeError when the recipe names more models, slices, sources or values than any real one."""
    models = _entries(doc, "models")
    if len(models) > MAX_MODELS:
        raise RecipeError(f"models: {len(models):,} entries, over the limit of {MAX_MODELS:,}; "
                          "split the merge into stages")
    slices = _entries(doc, "slices")
    if len(slices) > MAX_SLICES:
        raise RecipeError(f"slices: {len(slices):,} entries, over the limit of {MAX_SLICES:,}")
    sources = 0
    for i, s in enumerate(slices):
        sources += len(_entries(s, "sources")) if isinstance(s, dict) else 0
        if sources > MAX_SOURCES:
            raise RecipeError(f"slices[{i}]: more than {MAX_SOURCES:,} sources in all slices so far; "
                              "no real recipe names that many")
    if _count(doc, MAX_VALUES) > MAX_VALUES:
        raise RecipeError(f"recipe holds more than {MAX_VALUES:,} values (aliases expanded); "
                          "no real recipe is that large")
