"""``zoo.json``: the index of a built zoo (models, per-domain data, scorecard). Paths are relative
to the zoo directory."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from evaluation.zoo.errors import ZooUsageError

INDEX_NAME = "zoo.json"


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
    path = Path(zoo_dir) / INDEX_NAME
    try:
        return ZooIndex.model_validate_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ZooUsageError(f"{zoo_dir}: no {INDEX_NAME}; build one with `mergeops zoo build --out {zoo_dir}`") from None
    except ValidationError as exc:
        raise ZooUsageError(f"{path}: not a valid zoo index ({exc.error_count()} errors, first: "
                            f"{exc.errors()[0]['msg']})") from None
