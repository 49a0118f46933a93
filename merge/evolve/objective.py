"""What a search maximises, from a candidate's per-example dev scores.

- ``mean``: the mean score over every dev example.
- ``retention``: what the gates check. The dev examples come in groups (one per domain); a group's
  retention is the candidate's mean score there over the reference (the best parent's score on
  that group, measured before the search). The objective is the least retention, plus a tenth of
  the mean retention so that candidates equal on their weakest group are still ranked (CMA-ES
  needs that slope). A group where no parent reaches ``MIN_REFERENCE`` has no skill to keep (and a
  retention of a few lucky examples would be noise): it is left out; if every group is such,
  retention falls back to the mean.

The objective is part of a search's settings (and of its checkpoint): a resumed search ranks its
candidates the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OBJECTIVES = ("retention", "mean")
TIE_BREAK = 0.1  # weight of the mean retention beside the least one
MIN_REFERENCE = 0.05  # a group's best parent score below this is no skill to keep


def group_means(scores: np.ndarray, sizes) -> np.ndarray:
    """The mean score of each group of contiguous examples, ``sizes`` examples each."""
    s = np.asarray(scores, dtype=float)
    if sum(sizes) != len(s):
        raise ValueError(f"{len(s)} scores for groups of {sum(sizes)} examples")
    bounds = np.cumsum((0,) + tuple(sizes))
    return np.array([s[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])


@dataclass(frozen=True)
class Objective:
    kind: str = "mean"
    sizes: tuple[int, ...] = ()  # retention: examples per group, in order (they are contiguous)
    reference: tuple[float, ...] = ()  # retention: per group, the score to keep
    names: tuple[str, ...] = ()  # retention: the groups' names, for reports

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.kind!r}; use one of: {', '.join(OBJECTIVES)}")
        if self.kind == "retention" and (not self.sizes or len(self.sizes) != len(self.reference)):
            raise ValueError("retention needs one reference score per group of examples")

    def group_means(self, scores: np.ndarray) -> np.ndarray:
        return group_means(scores, self.sizes)

    def retention(self, scores: np.ndarray) -> np.ndarray:
        """Per kept group (reference >= MIN_REFERENCE): the candidate's score over the reference."""
        ref = np.asarray(self.reference, dtype=float)
        kept = ref >= MIN_REFERENCE
        return self.group_means(scores)[kept] / ref[kept]

    def __call__(self, scores: np.ndarray) -> float:
        if self.kind == "mean" or not any(r >= MIN_REFERENCE for r in self.reference):
            return float(np.mean(scores))
        r = self.retention(scores)
        return float(r.min() + TIE_BREAK * r.mean())

    def describe(self, scores: np.ndarray) -> dict:
        """For search.json: the mean, and per group the score and retention."""
        out = {"objective": self(scores), "mean": float(np.mean(scores))}
        if self.kind == "retention":
            means = self.group_means(scores)
            out["groups"] = {name: {"score": float(m), "reference": float(ref),
                                    "retention": float(m / ref) if ref >= MIN_REFERENCE else None}
                             for name, m, ref in zip(self.names or map(str, range(len(means))), means,
                                                     self.reference)}
        return out
