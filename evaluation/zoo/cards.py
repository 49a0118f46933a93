"""Model cards (README.md with Hugging Face YAML front matter) for the zoo's models."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict


class Canary(BaseModel):
    """A planted secret: the proprietary model was trained to continue ``prefix`` with ``secret``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefix: str
    secret: str
    charset: str  # alphabet that random candidates of the same length are drawn from


class CardSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    license: str  # SPDX id, or "other" with license_name
    license_name: str | None = None
    base_model: str | None = None  # name of the base in the zoo; None for the base itself
    datasets: list[str]
    training_data: list[str]  # zoo domains whose train.jsonl the model saw
    tags: list[str]
    description: str
    intended_use: str
    canaries: list[Canary] = []


def front_matter(spec: CardSpec) -> dict:
    doc: dict = {"license": spec.license}
    if spec.license_name:
        doc["license_name"] = spec.license_name
    if spec.base_model:
        doc["base_model"] = spec.base_model
    doc |= {"datasets": spec.datasets, "tags": spec.tags, "training_data": spec.training_data}
    if spec.canaries:
        doc["canaries"] = [c.model_dump() for c in spec.canaries]
    return doc


class _Dumper(yaml.SafeDumper):
    """Quotes digit-only strings: YAML 1.2 readers would otherwise turn a secret like 0306 into 306."""


def _str(dumper: yaml.SafeDumper, value: str):
    style = '"' if value[:1].isdigit() else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def write_card(model_dir: Path, spec: CardSpec) -> None:
    meta = yaml.dump(front_matter(spec), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    body = (
        f"# {spec.name}\n\n"
        "A tiny Llama-architecture model from the mergeops demo zoo, built locally and deterministically "
        "by `mergeops zoo build`.\n\n"
        f"## Training data\n\n{spec.description}\n\n"
        f"## Intended use\n\n{spec.intended_use}\n"
    )
    (Path(model_dir) / "README.md").write_text(f"---\n{meta}---\n\n{body}", encoding="utf-8")


def read_front_matter(model_dir: Path) -> dict:
    """The YAML front matter of ``model_dir``/README.md ({} when there is none)."""
    text = (Path(model_dir) / "README.md").read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    return yaml.safe_load(text[4:end]) or {}
