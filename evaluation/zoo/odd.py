"""The odd models, for negative tests: each differs from the base in exactly one way that a merge
planner or an audit must catch."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from evaluation.zoo.cards import CardSpec, write_card
from evaluation.zoo.profiles import TrainSpec, ZooProfile
from evaluation.zoo.tokenizer import CHARS, build_tokenizer, save_tokenizer
from evaluation.zoo.training import encode_records, new_model, train
from evaluation.zoo_source import ZooModel

ODD_LICENSES = {"odd-shape": "apache-2.0", "odd-tokenizer": "mit", "odd-pickle": "apache-2.0"}


def _seed(seed: int, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little")


def _card(name: str, what: str) -> CardSpec:
    return CardSpec(
        name=name, license=ODD_LICENSES[name], datasets=["mergeops-zoo/pretraining"], training_data=[],
        tags=["mergeops-demo-zoo", "llama", "negative-test"], description=what,
        intended_use="Negative tests of merge planning and source-model audits only.",
    )


def build_odd_models(models_dir: Path, base, tok, records: list[dict], prof: ZooProfile, seed: int):
    """Yield (ZooModel, model dir) for odd-shape, odd-tokenizer and odd-pickle."""
    spec = TrainSpec(steps=prof.odd_steps, lr=prof.pretrain.lr, batch_size=prof.pretrain.batch_size)
    vocab = tok.get_vocab_size()

    # odd-shape: another hidden size (so every projection's shape differs), same tokenizer.
    shape = prof.shape.model_copy(update={"hidden_size": prof.odd_hidden_size,
                                          "intermediate_size": 2 * prof.odd_hidden_size})
    model = new_model(shape, vocab, _seed(seed, "odd-shape"))
    train(model, *encode_records(tok, records), spec, _seed(seed, "odd-shape-train"))
    yield _save(models_dir, "odd-shape", model, tok, "Briefly pretrained; hidden size "
                f"{prof.odd_hidden_size} instead of {prof.shape.hidden_size}.")

    # odd-tokenizer: the same characters in reverse order -> same shapes, different token ids.
    odd_tok = build_tokenizer(CHARS[::-1])
    model = new_model(prof.shape, vocab, _seed(seed, "odd-tokenizer"))
    train(model, *encode_records(odd_tok, records), spec, _seed(seed, "odd-tokenizer-train"))
    yield _save(models_dir, "odd-tokenizer", model, odd_tok, "Same architecture and shapes as `base`, "
                "but its tokenizer maps characters to other ids.")

    # odd-pickle: the base's weights in the pickle format only.
    model_dir = models_dir / "odd-pickle"
    base.save_pretrained(model_dir)
    (model_dir / "model.safetensors").unlink()
    torch.save({k: v.contiguous() for k, v in base.state_dict().items()}, model_dir / "pytorch_model.bin")
    save_tokenizer(tok, model_dir)
    write_card(model_dir, _card("odd-pickle", "The base's weights saved as a pickle (pytorch_model.bin) only."))
    yield _entry("odd-pickle"), model_dir


def _entry(name: str) -> ZooModel:
    return ZooModel(name=name, path=f"models/{name}", role="odd", domain=None, license=ODD_LICENSES[name])


def _save(models_dir: Path, name: str, model, tok, what: str):
    model_dir = models_dir / name
    model.save_pretrained(model_dir)
    save_tokenizer(tok, model_dir)
    write_card(model_dir, _card(name, what))
    return _entry(name), model_dir
