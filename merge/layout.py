"""What a model directory holds, read from headers only: config, shards, tensor names and shapes.

This is the compatibility layer shared by the merge planner and the source-model audit: it never
loads a weight. ``read_layout`` validates every shard header (see ``safetensors_header``) and the
shard index; ``compare_layouts`` names the first parent and tensor that disagree with a reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from merge.errors import CompatibilityError, FormatError, UsageError
from merge.manifest import canonical_json
from merge.model_dir import inside_name, model_path, read_model_json
from merge.safetensors_header import SafetensorsHeader, TensorInfo, read_header

INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class ModelLayout:
    path: Path
    config: dict
    shards: dict[str, SafetensorsHeader]  # shard file name -> validated header
    tensors: dict[str, tuple[str, TensorInfo]]  # tensor name -> (shard file name, info)

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1].shape

    def dtype(self, name: str) -> str:
        return self.tensors[name][1].dtype


def pickle_files(model_dir: Path) -> list[str]:
    """Pickle-format checkpoint files in ``model_dir``: never opened, only named."""
    return sorted(p.name for p in Path(model_dir).iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)


def read_layout(model_dir: Path) -> ModelLayout:
    """Read config.json and every safetensors header of ``model_dir``; load no weights."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UsageError(f"{model_dir}: model directory not found")
    config_path = model_dir / "config.json"
    if not config_path.exists() and not config_path.is_symlink():
        raise UsageError(f"{model_dir}: no config.json (expected a Hugging Face model directory)")
    config = read_model_json(model_dir, "config.json")
    if not isinstance(config, dict):
        raise FormatError(f"{config_path}: not a JSON object")

    index_path = model_dir / INDEX_NAME
    if index_path.exists() or index_path.is_symlink():
        weight_map = _weight_map(model_dir, read_model_json(model_dir, INDEX_NAME))
        shard_names = sorted(set(weight_map.values()))
    else:
        weight_map = None
        shard_names = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not shard_names:
        pickles = pickle_files(model_dir)
        if pickles:
            raise FormatError(
                f"{model_dir}: only pickle checkpoints ({', '.join(pickles)}); pickle can run code when "
                "loaded, so convert to safetensors first (e.g. load it in an isolated environment and "
                "save_pretrained(..., safe_serialization=True))"
            )
        raise UsageError(f"{model_dir}: no *.safetensors weights found")

    shards: dict[str, SafetensorsHeader] = {}
    tensors: dict[str, tuple[str, TensorInfo]] = {}
    for shard in shard_names:
        shard_path = model_dir / shard
        if Path(shard).name != shard or not shard_path.is_file():
            raise FormatError(f"{index_path}: shard {shard!r} is missing from {model_dir}")
        model_path(model_dir, shard, what="shard")  # a regular file; a link must stay inside
        header = read_header(shard_path)
        shards[shard] = header
        for name, info in header.tensors.items():
            if name in tensors:
                raise FormatError(f"{model_dir}: tensor {name!r} appears in both {tensors[name][0]} and {shard}")
            tensors[name] = (shard, info)
    if weight_map is not None:
        for name, shard in weight_map.items():
            if tensors.get(name, (None,))[0] != shard:
                raise FormatError(f"{index_path}: tensor {name!r} is mapped to {shard} but not stored there")
        extra = sorted(set(tensors) - set(weight_map))
        if extra:
            raise FormatError(f"{index_path}: tensor {extra[0]!r} is stored but missing from the index")
    return ModelLayout(path=model_dir, config=config, shards=shards, tensors=tensors)


def _weight_map(model_dir: Path, doc: object) -> dict[str, str]:
    """The index's ``weight_map``: tensor name -> shard file name, each shard inside ``model_dir``."""
    index_path = model_dir / INDEX_NAME
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        raise FormatError(f"{index_path}: malformed shard index (\"weight_map\" must map tensor names to "
                          "shard file names); regenerate it with save_pretrained")
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise FormatError(f"{index_path}: malformed shard index: tensor {name[:80]!r} maps to "
                              f"{type(shard).__name__} {str(shard)[:40]}, not a shard file name")
        inside_name(model_dir, shard, what="shard")
    return weight_map


def architecture_fingerprint(layout: ModelLayout) -> str:
    """sha256 over the model type and every tensor's name and shape (not its dtype or values)."""
    doc = {
        "model_type": layout.model_type,
        "tensors": {name: list(info.shape) for name, (_, info) in sorted(layout.tensors.items())},
    }
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def read_tokenizer_json(model_dir: Path) -> dict | None:
    """The parsed tokenizer.json of ``model_dir``, or None when it has none."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.exists() and not path.is_symlink():
        return None
    doc = read_model_json(model_dir, "tokenizer.json")
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: not a JSON object (a tokenizer.json holds one)")
    return doc


def tokenizer_fingerprint(model_dir: Path) -> str | None:
    """sha256 over the vocabulary and special tokens, or None when the dir has no tokenizer.json."""
    doc = read_tokenizer_json(model_dir)
    if doc is None:
        return None
    model = doc.get("model") or {}
    added = doc.get("added_tokens") or []
    if not isinstance(model, dict) or not isinstance(added, list) or not all(
            isinstance(t, dict) and _count(t.get("id")) and isinstance(t.get("content"), str) for t in added):
        raise FormatError(f"{Path(model_dir) / 'tokenizer.json'}: malformed tokenizer (\"model\" must be an object, "
                          "\"added_tokens\" a list of {id, content}); re-save it with the tokenizers library")
    fingerprint = {
        "type": model.get("type"),
        "vocab": model.get("vocab"),
        "merges": model.get("merges"),
        "added_tokens": sorted((t.get("id"), t.get("content")) for t in added),
    }
    return hashlib.sha256(canonical_json(fingerprint)).hexdigest()


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def compare_layouts(reference: ModelLayout, other: ModelLayout) -> None:
    """Raise CompatibilityError naming ``other`` and the first tensor that disagrees with ``reference``."""
    if reference.model_type != other.model_type:
        raise CompatibilityError(
            f"{other.path}: architecture {other.model_type!r} differs from {reference.path}'s "
            f"{reference.model_type!r}; only models of one architecture can be merged"
        )
    missing = sorted(set(reference.tensors) - set(other.tensors))
    if missing:
        raise CompatibilityError(f"{other.path}: tensor {missing[0]!r} of {reference.path} is missing")
    extra = sorted(set(other.tensors) - set(reference.tensors))
    if extra:
        raise CompatibilityError(f"{other.path}: tensor {extra[0]!r} is not in {reference.path}")
    for name in sorted(reference.tensors):
        if reference.shape(name) != other.shape(name):
            raise CompatibilityError(
                f"{other.path}: tensor {name!r} has shape {list(other.shape(name))}, "
                f"{reference.path} has {list(reference.shape(name))}"
            )
