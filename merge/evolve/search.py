"""Drive a search: ask a candidate, score it with the caller's fitness, tell the scores; checkpoint.

The checkpoint is the search's settings and every evaluation so far (candidate and per-example
scores), written atomically after each evaluation. Resuming builds the search afresh from the same
settings and seed and replays the recorded evaluations through ``ask``/``tell`` without calling the
fitness: each replayed ``ask`` must propose exactly the recorded candidate, so a resumed run is the
uninterrupted run, and a checkpoint from other settings is refused instead of silently diverging.
The format holds only JSON (no pickle), so reading a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from merge.bounded import MIB, loads_json, read_bytes
from merge.errors import UsageError
from merge.evolve.box import CMAES, RandomSearch
from merge.evolve.m2n2 import M2N2, M2N2Config
from merge.evolve.objective import Objective

Algorithm = Literal["m2n2", "cmaes", "random"]
ALGORITHMS: tuple[str, ...] = ("m2n2", "cmaes", "random")
CHECKPOINT_VERSION = 1
CHECKPOINT_LIMIT = 512 * MIB  # budget x examples floats; 10k evaluations x 1k examples is ~100 MiB

Fitness = Callable[[dict], np.ndarray]  # candidate -> per-example scores [examples], higher is better


class CheckpointError(UsageError):
    """A checkpoint is unreadable or belongs to another search."""


@dataclass(frozen=True)
class SearchSpec:
    """Everything that fixes a search's proposals (with the seed): what a checkpoint must match."""

    algorithm: Algorithm
    seed: int = 0
    n_seeds: int = 2  # m2n2: the parents the archive starts from
    bounds: tuple[tuple[float, float], ...] = ()  # cmaes / random: the box of the recipe space
    x0: tuple[float, ...] | None = None  # cmaes: the start (the recipe's own values)
    popsize: int | None = None  # cmaes: None = 4 + 3 ln(dim)
    m2n2: M2N2Config = field(default_factory=M2N2Config)
    objective: Objective = field(default_factory=Objective)  # what "best" means (CMA-ES, the winner)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> "SearchSpec":
        doc = dict(doc)
        doc["m2n2"] = M2N2Config(**doc.get("m2n2", {}))
        objective = dict(doc.get("objective", {}))
        doc["objective"] = Objective(**{k: tuple(v) if isinstance(v, list) else v for k, v in objective.items()})
        doc["bounds"] = tuple(tuple(b) for b in doc.get("bounds", ()))
        if doc.get("x0") is not None:
            doc["x0"] = tuple(doc["x0"])
        return cls(**doc)


def make_search(spec: SearchSpec, weights: np.ndarray | None = None):
    rng = np.random.default_rng(spec.seed)
    if spec.algorithm == "m2n2":
        return M2N2(spec.n_seeds, spec.m2n2, rng, weights)
    if not spec.bounds:
        raise UsageError(f"{spec.algorithm} needs a space to search: the recipe has no tunable parameter")
    bounds = np.array(spec.bounds, dtype=float)
    if spec.algorithm == "cmaes":
        return CMAES(bounds, rng, x0=None if spec.x0 is None else np.array(spec.x0), popsize=spec.popsize,
                     objective=spec.objective)
    if spec.algorithm == "random":
        return RandomSearch(bounds, rng)
    raise UsageError(f"unknown algorithm {spec.algorithm!r}; use one of: {', '.join(ALGORITHMS)}")


@dataclass
class Evaluation:
    candidate: dict
    scores: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))


@dataclass
class SearchResult:
    spec: SearchSpec
    evaluations: list[Evaluation]
    search: object  # the live search (M2N2 archive, CMA-ES state) after the last evaluation

    def best(self) -> Evaluation:
        """The evaluation the spec's objective ranks highest (first of equals), any algorithm: an
        M2N2 child that left the archive is still a model its recipe rebuilds."""
        return max(self.evaluations, key=lambda e: self.spec.objective(e.scores))


def _dump(spec: SearchSpec, evaluations: list[Evaluation]) -> bytes:
    doc = {"version": CHECKPOINT_VERSION, "spec": spec.to_json(),
           "evaluations": [{"candidate": e.candidate, "scores": e.scores.tolist()} for e in evaluations]}
    return json.dumps(doc, separators=(",", ":")).encode()


def write_checkpoint(path: Path, spec: SearchSpec, evaluations: list[Evaluation]) -> None:
    """Atomic: a crash mid-write leaves the previous checkpoint."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(_dump(spec, evaluations))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path) -> tuple[SearchSpec, list[Evaluation]]:
    try:
        doc = loads_json(read_bytes(path, limit=CHECKPOINT_LIMIT, what="checkpoint"), what=str(path))
        if doc.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{path}: checkpoint version {doc.get('version')!r}, expected {CHECKPOINT_VERSION}")
        spec = SearchSpec.from_json(doc["spec"])
        evals = [Evaluation(e["candidate"], np.asarray(e["scores"], dtype=float)) for e in doc["evaluations"]]
    except UsageError as exc:
        raise CheckpointError(str(exc)) from None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a search checkpoint ({type(exc).__name__}: {exc}); "
                              "delete it to start afresh") from None
    return spec, evals


def run_search(spec: SearchSpec, fitness: Fitness, budget: int, *, checkpoint: Path | None = None,
               weights: np.ndarray | None = None,
               on_eval: Callable[[int, Evaluation, object], None] | None = None) -> SearchResult:
    """Run ``spec`` until ``budget`` evaluations in all (replayed ones included).

    With ``checkpoint`` an existing file is resumed (its spec must equal ``spec``) and the file is
    rewritten after every evaluation. ``on_eval(i, evaluation, search)`` is called after each new
    evaluation (not the replayed ones), with the live search (e.g. to see M2N2's archive).
    """
    if budget < 1:
        raise UsageError(f"budget must be at least 1 evaluation, got {budget}")
    search = make_search(spec, weights)
    done: list[Evaluation] = []
    if checkpoint is not None and Path(checkpoint).exists():
        old_spec, old = read_checkpoint(Path(checkpoint))
        if old_spec != spec:
            raise CheckpointError(f"{checkpoint}: written by another search ({old_spec.algorithm}, seed "
                                  f"{old_spec.seed}); use a new output directory or the same settings")
        for i, ev in enumerate(old[:budget]):
            proposed = search.ask()
            if proposed != ev.candidate:
                raise CheckpointError(f"{checkpoint}: evaluation {i} does not replay (proposed {proposed}, "
                                      f"recorded {ev.candidate}); the code or settings changed")
            search.tell(proposed, ev.scores)
            done.append(ev)
    for i in range(len(done), budget):
        candidate = search.ask()
        scores = np.asarray(fitness(candidate), dtype=float)
        if scores.ndim != 1 or not len(scores) or not np.all(np.isfinite(scores)):
            raise ValueError(f"fitness must return a finite 1-D array of per-example scores, got shape "
                             f"{scores.shape}")
        search.tell(candidate, scores)
        ev = Evaluation(candidate, scores)
        done.append(ev)
        if checkpoint is not None:
            write_checkpoint(Path(checkpoint), spec, done)
        if on_eval is not None:
            on_eval(i, ev, search)
    return SearchResult(spec, done, search)
