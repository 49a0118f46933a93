"""The demo model zoo: tiny Llama models built locally, deterministically, for demos and tests.

``build_zoo(out, profile, seed) -> ZooIndex`` builds one; ``load_zoo(dir) -> ZooIndex`` reads its
``zoo.json``; ``score_models`` scores any model dirs on the zoo's domains.
"""

from evaluation.zoo.build import build_zoo
from evaluation.zoo_source import ZooIndex, load_zoo
from evaluation.zoo.scorecard import format_table, score_models

__all__ = ["ZooIndex", "build_zoo", "format_table", "load_zoo", "score_models"]
