"""CMA-ES and random search over a box of real parameters (a recipe space's vector).

CMA-ES (Hansen's covariance matrix adaptation, via the ``cmaes`` package) minimises, so it is told
the negative objective (``objective.Objective``: the mean score, or the least retention). Random
search draws uniformly from the same box at the same budget: the baseline any search must beat. Both propose ``{"id": i, "kind": "point", "x": [...]}``.
"""

from __future__ import annotations

import numpy as np
from cmaes import CMA

from merge.evolve.objective import Objective


def _uint32(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


class CMAES:
    """One candidate per ``ask``; a generation of ``popsize`` is told to CMA-ES once complete."""

    def __init__(self, bounds: np.ndarray, rng: np.random.Generator, x0: np.ndarray | None = None,
                 sigma: float | None = None, popsize: int | None = None,
                 objective: Objective | None = None):
        bounds = np.asarray(bounds, dtype=float)
        lo, hi = bounds[:, 0], bounds[:, 1]
        mean = (lo + hi) / 2 if x0 is None else np.clip(np.asarray(x0, dtype=float), lo, hi)
        # A quarter of the narrowest range: the first generation spans the box without piling up
        # on its walls (cmaes clips to bounds by resampling).
        sigma = float(sigma if sigma is not None else (hi - lo).min() / 4)
        self.opt = CMA(mean=mean, sigma=sigma, bounds=bounds, seed=_uint32(rng), population_size=popsize)
        self.objective = objective or Objective()
        self.next_id = 0
        self._told: list[tuple[np.ndarray, float]] = []

    @property
    def popsize(self) -> int:
        return self.opt.population_size

    def ask(self) -> dict:
        return {"id": self.next_id, "kind": "point", "x": [float(v) for v in self.opt.ask()]}

    def tell(self, candidate: dict, scores: np.ndarray) -> None:
        self.next_id = candidate["id"] + 1
        self._told.append((np.asarray(candidate["x"]), -self.objective(scores)))
        if len(self._told) == self.opt.population_size:
            self.opt.tell(self._told)
            self._told = []


class RandomSearch:
    def __init__(self, bounds: np.ndarray, rng: np.random.Generator):
        self.bounds = np.asarray(bounds, dtype=float)
        self.rng = rng
        self.next_id = 0

    def ask(self) -> dict:
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        return {"id": self.next_id, "kind": "point", "x": [float(v) for v in self.rng.uniform(lo, hi)]}

    def tell(self, candidate: dict, scores: np.ndarray) -> None:
        self.next_id = candidate["id"] + 1

