"""M2N2: model merging of natural niches (Abrantes, Lange, Tang, "Competition and Attraction
Improve Model Fusion", GECCO 2025, https://arxiv.org/abs/2508.16204).

An archive of models, seeded with the parents, evolves by crossover. Each member is known by its
per-example scores s(x_j|θ_i) on a dev split (a matrix [members, examples]). The rules, as plain
functions over that matrix:

- resource competition: f(θ_i) = Σ_j c_j s(x_j|θ_i) / (z_j^α + ε), z_j = Σ_k s(x_j|θ_k) over the
  archive. An example every member solves is worth little; one only θ_i solves is worth a lot.
  α = 0 is a plain genetic algorithm (fitness = weighted total score).
- attraction: g(A, B) = Σ_j c_j / (z_j + ε) · max(s(x_j|B) − s(x_j|A), 0): B is attractive to A
  where it solves what A does not, most of all where few members do.
- parent A is drawn in proportion to fitness, parent B in proportion to attraction to A.
- a child replaces the weakest member only if its fitness is higher (fitness computed over the
  archive plus the child), so the archive never loses its best niche to a worse model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-8  # keeps 1 / z finite where no member solves an example


def _weights(c: np.ndarray | None, n: int) -> np.ndarray:
    return np.ones(n) if c is None else np.asarray(c, dtype=float)


def competition_fitness(scores: np.ndarray, alpha: float = 1.0, c: np.ndarray | None = None,
                        eps: float = EPS) -> np.ndarray:
    """f [members] from scores [members, examples] (z summed over all rows given)."""
    s = np.asarray(scores, dtype=float)
    z = s.sum(axis=0)
    return (s * (_weights(c, s.shape[1]) / (z**alpha + eps))).sum(axis=1)


def attraction(scores: np.ndarray, a: int, c: np.ndarray | None = None, eps: float = EPS) -> np.ndarray:
    """g(A, B) for every member B [members], A = row ``a``; g(A, A) = 0."""
    s = np.asarray(scores, dtype=float)
    z = s.sum(axis=0)
    gain = np.maximum(s - s[a], 0.0)
    return (gain * (_weights(c, s.shape[1]) / (z + eps))).sum(axis=1)


def _draw(rng: np.random.Generator, weights: np.ndarray, exclude: int | None = None) -> int:
    """An index drawn in proportion to ``weights``; uniform (never ``exclude`` when possible) when
    all weights are zero, so a flat archive still mates."""
    w = np.clip(np.asarray(weights, dtype=float), 0.0, None)
    if exclude is not None:
        w[exclude] = 0.0
    if w.sum() <= 0:
        w = np.ones_like(w)
        if exclude is not None and len(w) > 1:
            w[exclude] = 0.0
    return int(rng.choice(len(w), p=w / w.sum()))


def select_parents(scores: np.ndarray, rng: np.random.Generator, alpha: float = 1.0,
                   c: np.ndarray | None = None, matchmaker: bool = True) -> tuple[int, int]:
    """(A, B): A ∝ fitness; B ∝ attraction to A (``matchmaker``) or ∝ fitness too."""
    f = competition_fitness(scores, alpha, c)
    a = _draw(rng, f)
    b = _draw(rng, attraction(scores, a, c) if matchmaker else f, exclude=a)
    return a, b


def weakest_replaced(scores: np.ndarray, child: np.ndarray, alpha: float = 1.0,
                     c: np.ndarray | None = None) -> int | None:
    """The archive row the child replaces, or None when it is no better than the weakest member.
    Fitness is computed over the archive plus the child; ties keep the incumbent."""
    ext = np.vstack([np.asarray(scores, dtype=float), np.asarray(child, dtype=float)[None, :]])
    f = competition_fitness(ext, alpha, c)
    weakest = int(np.argmin(f[:-1]))
    return weakest if f[-1] > f[weakest] else None


@dataclass(frozen=True)
class M2N2Config:
    archive_size: int = 8  # the paper's LLM runs keep a small archive; digits used 20
    alpha: float = 1.0  # 0: plain genetic algorithm
    matchmaker: bool = True  # False: parent B ∝ fitness too (the paper's ablation)
    splitpoint: bool = True  # False: one SLERP ratio for the whole model


class M2N2:
    """The search state: archive rows (candidate ids and scores) and the generator.

    ``ask`` returns the next candidate: first the seeds (the parents, in order), then crossovers
    ``{"kind": "cross", "a": id, "b": id, "split": u, "w": w}`` with u, w ∈ [0, 1); the caller maps
    u onto its split units (elements or tensors). ``tell`` gives that candidate's per-example scores.
    """

    def __init__(self, n_seeds: int, config: M2N2Config, rng: np.random.Generator,
                 weights: np.ndarray | None = None):
        if n_seeds < 2:
            raise ValueError("M2N2 needs at least two models to start from")
        if config.archive_size < n_seeds:
            raise ValueError(f"archive_size {config.archive_size} is smaller than the {n_seeds} parents")
        self.config, self.rng, self.c = config, rng, weights
        self.n_seeds = n_seeds
        self.ids: list[int] = []  # archive row -> candidate id
        self.scores: np.ndarray | None = None  # [rows, examples]
        self.next_id = 0

    def ask(self) -> dict:
        cid = self.next_id
        if cid < self.n_seeds:
            return {"id": cid, "kind": "seed", "parent": cid}
        a, b = select_parents(self.scores, self.rng, self.config.alpha, self.c, self.config.matchmaker)
        split = float(self.rng.random()) if self.config.splitpoint else 1.0
        return {"id": cid, "kind": "cross", "a": self.ids[a], "b": self.ids[b], "split": split,
                "w": float(self.rng.random())}

    def tell(self, candidate: dict, scores: np.ndarray) -> None:
        s = np.asarray(scores, dtype=float)[None, :]
        self.next_id = candidate["id"] + 1
        if self.scores is None:
            self.ids, self.scores = [candidate["id"]], s
        elif len(self.ids) < self.config.archive_size:
            self.ids.append(candidate["id"])
            self.scores = np.vstack([self.scores, s])
        else:
            row = weakest_replaced(self.scores, s[0], self.config.alpha, self.c)
            if row is not None:
                self.ids[row] = candidate["id"]
                self.scores[row] = s[0]

    def best(self) -> int:
        """The archive's best candidate id by mean (c-weighted) score: the model to ship."""
        c = _weights(self.c, self.scores.shape[1])
        return self.ids[int(np.argmax(self.scores @ c))]

    def diversity(self) -> float:
        """Share of examples on which archive members disagree (0: all solve the same ones)."""
        s = self.scores
        return float(np.mean(s.max(axis=0) != s.min(axis=0)))
