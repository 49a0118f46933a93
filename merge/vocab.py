"""Vocabulary alignment: merge parents whose tokenizers differ by mapping embedding rows by token.

With ``tokenizer_source: base`` (or a model) the output vocabulary is that tokenizer's; with
``union`` it is the base's (or first parent's) followed by every token another parent adds, in
parent order. For each parent, row ``j`` of a vocabulary tensor (``embed_tokens``, ``lm_head``:
non-layer 2-D tensors with one row per token) becomes the parent's row for token ``j``'s string.
A parent lacking the token contributes the base's row for it when the base has it (a "no change"
vote in task arithmetic), otherwise the mean of its own rows (the usual new-token init).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from merge.errors import CompatibilityError, FormatError
from merge.layout import read_tokenizer_json


def read_vocab(model_dir: Path) -> dict[str, int] | None:
    """token string -> id from tokenizer.json (model vocab plus added tokens); None without one."""
    doc = read_tokenizer_json(model_dir)
    if doc is None:
        return None
    path = Path(model_dir) / "tokenizer.json"
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    raw = model.get("vocab")
    try:
        if isinstance(raw, dict):
            vocab = {str(k): _token_id(v) for k, v in raw.items()}
        elif isinstance(raw, list):  # Unigram: [[piece, score], ...]
            vocab = {str(e[0]): i for i, e in enumerate(raw)}
        else:
            raise CompatibilityError(f"{path}: tokenizer model {str(model.get('type'))[:40]!r} has no vocabulary "
                                     "to align; give every parent a tokenizer.json with a vocab, or drop tokenizer_source")
        for tok in doc.get("added_tokens") or []:
            vocab[str(tok["content"])] = _token_id(tok["id"])
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise FormatError(f"{path}: malformed vocabulary ({type(exc).__name__}: {str(exc)[:80]}); "
                          "re-save it with the tokenizers library") from None
    return vocab


def _token_id(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"token id {str(value)[:20]} is not a non-negative integer")
    return value


@dataclass(frozen=True)
class VocabPlan:
    tokens: tuple[str, ...]  # output id -> token string
    rows: tuple[torch.Tensor, ...]  # per parent: [len(tokens)] parent row index, -1 if missing
    base: int | None  # parent whose rows fill gaps

    @property
    def size(self) -> int:
        return len(self.tokens)


def plan_vocab(source: str, parents: list[Path], base: int | None, source_index: int | None) -> VocabPlan:
    vocabs = [read_vocab(p) for p in parents]
    for p, v in zip(parents, vocabs):
        if v is None:
            raise CompatibilityError(f"{p}: no tokenizer.json; tokenizer_source needs every parent's vocabulary")
    if source == "union":
        first = base if base is not None else 0
        tokens = [t for t, _ in sorted(vocabs[first].items(), key=lambda kv: kv[1])]
        seen = set(tokens)
        for v in vocabs:
            for t, _ in sorted(v.items(), key=lambda kv: kv[1]):
                if t not in seen:
                    tokens.append(t)
                    seen.add(t)
    else:
        idx = base if source == "base" else source_index
        if idx is None:
            raise CompatibilityError("tokenizer_source: base needs base_model")
        tokens = [t for t, _ in sorted(vocabs[idx].items(), key=lambda kv: kv[1])]
    first = vocabs[base if source != "base" and source_index is not None else (base or 0)]
    if source not in ("union", "base") and source_index is not None:
        first = vocabs[source_index]
    if sorted(first.values()) != list(range(len(first))):
        raise CompatibilityError("the tokenizer_source vocabulary has gaps in its ids; cannot align rows to it")
    rows = tuple(torch.tensor([v.get(t, -1) for t in tokens], dtype=torch.long) for v in vocabs)
    return VocabPlan(tuple(tokens), rows, base)


def map_rows(tensors: list[torch.Tensor], parents: list[int], plan: VocabPlan) -> list[torch.Tensor]:
    """Re-index each parent's vocabulary tensor [rows, ...] to the output vocabulary."""
    out = []
    base_mapped = None
    if plan.base is not None and plan.base in parents:
        b = tensors[parents.index(plan.base)]
        base_mapped = _take(b, plan.rows[plan.base], b.float().mean(0).to(b.dtype))
    for t, p in zip(tensors, parents):
        fill = t.float().mean(0).to(t.dtype)
        mapped = _take(t, plan.rows[p], fill)
        if base_mapped is not None and p != plan.base:
            missing = plan.rows[p] < 0
            has_base = plan.rows[plan.base] >= 0
            mapped[missing & has_base] = base_mapped[missing & has_base]
        out.append(mapped)
    return out


def _take(t: torch.Tensor, rows: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    valid = (rows >= 0) & (rows < t.shape[0])
    out = t[rows.clamp(min=0, max=t.shape[0] - 1)]
    out[~valid] = fill
    return out


def union_tokenizer(source_dir: Path, plan: VocabPlan) -> str:
    """The source's tokenizer.json with the tokens it lacks appended as added tokens."""
    doc = read_tokenizer_json(source_dir) or {}
    have = read_vocab(source_dir) or {}
    added = doc.setdefault("added_tokens", [])
    for i, tok in enumerate(plan.tokens):
        if tok not in have:
            added.append({"id": i, "content": tok, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": True, "special": False})
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
