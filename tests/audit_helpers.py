"""Crafted model directories for the audit tests: tiny, valid by default, broken on purpose."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import torch
from safetensors.torch import save_file

VOCAB = {c: i for i, c in enumerate("abcdefgh")}


def base_tensors(hidden: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(len(VOCAB), hidden, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(2 * hidden, hidden, generator=g),
        "model.norm.weight": torch.ones(hidden),
    }


def finetune(base: dict[str, torch.Tensor], seed: int, scale: float = 0.01) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in base.items()}


def make_model(
    model_dir: Path,
    tensors: dict[str, torch.Tensor] | None = None,
    *,
    license: str | None = "apache-2.0",
    base_model: str | None = None,
    vocab: dict[str, int] | None = None,
    card_extra: str = "",
) -> Path:
    """A Hugging Face-style dir: config.json, tokenizer.json, model.safetensors, README.md card."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = base_tensors() if tensors is None else tensors
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(model_dir / "model.safetensors"))
    hidden = tensors["model.embed_tokens.weight"].shape[1] if "model.embed_tokens.weight" in tensors else 0
    (model_dir / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": hidden}))
    tokenizer = {"model": {"type": "BPE", "vocab": vocab or VOCAB, "merges": []}, "added_tokens": []}
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    front = ""
    if license is not None:
        front += f"license: {license}\n"
    if base_model is not None:
        front += f"base_model: {base_model}\n"
    (model_dir / "README.md").write_text(f"---\n{front}{card_extra}---\n\n# {model_dir.name}\n")
    return model_dir


def raw_safetensors(path: Path, header: dict, buffer: bytes, claimed_length: int | None = None) -> None:
    """Write a safetensors file byte by byte, so its header can lie."""
    doc = json.dumps(header).encode()
    n = len(doc) if claimed_length is None else claimed_length
    path.write_bytes(struct.pack("<Q", n) + doc + buffer)


class _Payload:
    """Unpickling this creates ``marker``: proof that a file was deserialised."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_bomb(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=4)
