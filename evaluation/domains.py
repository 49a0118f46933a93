"""Seeded generators for the demo zoo's domains, and their train/eval JSONL splits.

Every domain maps a short string over a small alphabet to another string of the same alphabet, so
the domains share structure (same input distribution, same output length, same prompt format):
that shared structure is what lets fine-tunes of one base stay close enough to merge.

A record is ``{"prompt": "sort cabd=", "target": "abcd"}``; a model is scored by greedy decoding
from ``prompt`` up to the first "\\n" and comparing the stripped continuation with ``target``.
Train and eval splits are drawn from one seeded stream and are disjoint by prompt.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# The letters the target domains are written in; pretraining also uses a disjoint "related" alphabet
# (the same operations on other letters) so the base learns the format without the skill itself.
ALPHABET = "abcdefghij"
RELATED_ALPHABET = "klmnopqrst"


def _shift(text: str, alphabet: str) -> str:
    return "".join(alphabet[(alphabet.index(c) + 1) % len(alphabet)] for c in text)


def _swap(text: str, alphabet: str) -> str:
    chars = list(text)
    for i in range(0, len(chars) - 1, 2):
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


@dataclass(frozen=True)
class Domain:
    name: str
    tag: str  # prompt prefix, e.g. "sort"
    op: Callable[[str, str], str]  # (input, alphabet) -> target
    description: str

    def record(self, text: str, alphabet: str = ALPHABET) -> dict[str, str]:
        return {"prompt": f"{self.tag} {text}=", "target": self.op(text, alphabet)}


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("reverse", "rev", lambda s, a: s[::-1], "reverse a string of letters"),
        Domain("sort", "sort", lambda s, a: "".join(sorted(s, key=a.index)), "sort letters alphabetically"),
        Domain("shift", "shift", _shift, "replace each letter by the next one of a 10-letter alphabet, cyclically"),
        Domain("swap", "swap", _swap, "swap each adjacent pair of letters"),
    )
}
# "copy" is pretraining-only: it teaches the prompt format and reading the input back.
COPY = Domain("copy", "copy", lambda s, a: s, "copy the input")

LENGTHS = (4, 7)  # default (min, max) input length, inclusive


def random_text(rng: random.Random, alphabet: str = ALPHABET, lengths: tuple[int, int] = LENGTHS) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(*lengths)))


def sample(domain: Domain, n: int, rng: random.Random, alphabet: str = ALPHABET,
           exclude: set[str] = frozenset(), lengths: tuple[int, int] = LENGTHS) -> list[dict[str, str]]:
    """``n`` records with distinct prompts, none of whose prompts is in ``exclude``."""
    out: list[dict[str, str]] = []
    seen = set(exclude)
    while len(out) < n:
        rec = domain.record(random_text(rng, alphabet, lengths), alphabet)
        if rec["prompt"] not in seen:
            seen.add(rec["prompt"])
            out.append(rec)
    return out


def make_splits(name: str, n_train: int, n_eval: int, seed: int,
                lengths: tuple[int, int] = LENGTHS) -> tuple[list[dict], list[dict]]:
    """Disjoint (train, eval) records of domain ``name``; eval is drawn first so it does not depend
    on ``n_train``."""
    domain = DOMAINS[name]
    rng = random.Random(f"{seed}:{name}")
    eval_records = sample(domain, n_eval, rng, lengths=lengths)
    train_records = sample(domain, n_train, rng, exclude={r["prompt"] for r in eval_records}, lengths=lengths)
    return train_records, eval_records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
