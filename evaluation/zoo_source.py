"""What a built demo zoo offers evaluation, read from its ``zoo.json``: the domains with their
train/eval JSONL, the models with their roles, and which model is the specialist of which domain.

The zoo is one source of suites and of declared training data, not a requirement: evaluation asks
for it only when a suite names zoo domains or a model card names a zoo domain as training data.
This module is the one place that reads ``zoo.json``; the builder (``evaluation/zoo/``) writes it
with these models, and nothing here imports the builder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from evaluation.errors import ZooIndexError
from merge.bounded import MIB, loads_json, read_bytes
from merge.errors import UsageError
from merge.manifest import content_id

ZOO_INDEX_NAME = "zoo.json"
ZOO_INDEX_LIMIT = 16 * MIB  # a few KiB: its models, domains and scorecard


class ZooModel(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    path: str  # e.g. "models/sort"
    role: Literal["base", "specialist", "odd"]
    domain: str | None  # the specialist's own domain; None for base and odd models
    license: str
    canaries: bool = False


class ScoreRow(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    domain: str
    exact_match: float


class DomainData(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    train: str  # e.g. "domains/sort/train.jsonl"
    eval: str


class ZooIndex(BaseModel):
    model_config = ConfigDict(frozen=True)

    profile: str
    seed: int
    models: list[ZooModel]
    scorecard: list[ScoreRow]
    domains: list[DomainData]

    def model(self, name: str) -> ZooModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def score(self, model: str, domain: str) -> float:
        for row in self.scorecard:
            if row.model == model and row.domain == domain:
                return row.exact_match
        raise KeyError((model, domain))


def load_zoo(zoo_dir: Path) -> ZooIndex:
    """Read and validate ``zoo_dir``/zoo.json."""
    path = Path(zoo_dir) / ZOO_INDEX_NAME
    if not path.exists() and not path.is_symlink():
        raise ZooIndexError(f"{zoo_dir}: no {ZOO_INDEX_NAME}; build one with `mergeops zoo build --out {zoo_dir}`")
    try:  # bounded: a regular file (not a FIFO or /dev/zero), strict UTF-8, JSON of bounded depth
        return ZooIndex.model_validate(loads_json(read_bytes(path, limit=ZOO_INDEX_LIMIT, what="zoo index"),
                                                  what=str(path)))
    except UsageError as exc:
        raise ZooIndexError(str(exc)) from None
    except ValidationError as exc:
        raise ZooIndexError(f"{path}: not a valid zoo index ({exc.error_count()} errors, first: "
                            f"{exc.errors()[0]['msg']})") from None


@dataclass(frozen=True)
class DomainFiles:
    train: Path  # absolute
    eval: Path


def domain_files(zoo_dir: Path) -> dict[str, DomainFiles]:
    """domain -> its absolute train and eval JSONL files (``{"prompt", "target"}`` lines)."""
    root = Path(zoo_dir).resolve()
    return {d.name: DomainFiles(train=root / d.train, eval=root / d.eval) for d in load_zoo(zoo_dir).domains}


def specialist_keys(zoo_dir: Path) -> dict[str, str]:
    """Each specialist of the zoo by its resolved path and by its content id -> its domain, so an
    evaluated directory is recognised whether it is the zoo's own or a copy of its bytes."""
    out: dict[str, str] = {}
    for m in load_zoo(zoo_dir).models:
        if m.role == "specialist" and m.domain:
            path = (Path(zoo_dir) / m.path).resolve()
            out[str(path)] = m.domain
            if path.is_dir():
                out[content_id(path)] = m.domain
    return out
