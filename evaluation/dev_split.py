"""Dev splits for search: records of a zoo domain disjoint from both its train and eval splits.

An evolutionary search scores hundreds of candidates; it must never see the eval split it is
finally judged on, nor select for what the parents were trained on. The dev split is drawn from the
domain's own generator with a stream of its own (``"<seed>:<domain>:dev"``), excluding every prompt
of the zoo's train and eval files as they are on disk, at the eval split's input lengths. It is
derived, not stored in the zoo, so the zoo's bytes (and every md5 recorded for them) stay as built.
"""

from __future__ import annotations

import random
from pathlib import Path

from evaluation.domains import DOMAINS, read_jsonl, sample
from evaluation.errors import ZooIndexError
from evaluation.zoo_source import domain_files, load_zoo

# Per domain. On the demo zoo 100 prompts let CMA-ES fit the dev split's noise (its winner lost up to
# 7 points per domain on the eval split); 300 carried over within 1-7 points, at 3x the scoring cost.
DEV_SIZE = 300


def _input(prompt: str, tag: str) -> str:
    return prompt[len(tag) + 1:-1]  # "rev abcd=" -> "abcd"


def zoo_dev_records(zoo_dir: Path, domains: list[str], n: int = DEV_SIZE) -> dict[str, list[dict]]:
    """domain -> ``n`` dev records ``{"prompt", "target"}``, disjoint from its train and eval files."""
    files = domain_files(zoo_dir)
    seed = load_zoo(zoo_dir).seed
    out: dict[str, list[dict]] = {}
    for name in domains:
        if name not in files or name not in DOMAINS:
            known = sorted(set(files) & set(DOMAINS))
            raise ZooIndexError(f"{zoo_dir}: no generated domain {name!r} to draw a dev split from "
                                f"(zoo domains: {', '.join(known)})")
        domain = DOMAINS[name]
        train, evals = read_jsonl(files[name].train), read_jsonl(files[name].eval)
        lengths = [len(_input(r["prompt"], domain.tag)) for r in evals]
        seen = {r["prompt"] for r in train} | {r["prompt"] for r in evals}
        rng = random.Random(f"{seed}:{name}:dev")
        out[name] = sample(domain, n, rng, exclude=seen, lengths=(min(lengths), max(lengths)))
    return out
