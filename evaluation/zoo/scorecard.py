"""Exact-match scorecard: every model × every domain of a zoo, greedy decoding up to "\\n".

A plain function so the pipeline can add a merged model's row later:
``score_models({"merged": out_dir}, zoo_dir)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from evaluation.domains import read_jsonl
from evaluation.zoo.training import greedy_complete
from evaluation.zoo_source import ScoreRow
from merge.model_dir import check_loadable
from merge.progress import Progress


def domain_names(zoo_dir: Path) -> list[str]:
    return sorted(p.name for p in (Path(zoo_dir) / "domains").iterdir() if (p / "eval.jsonl").is_file())


def exact_match(model, tok: Tokenizer, records: list[dict]) -> float:
    outputs = greedy_complete(model, tok, [r["prompt"] for r in records])
    return sum(o.strip() == r["target"] for o, r in zip(outputs, records)) / len(records)


def score_models(model_dirs: Mapping[str, Path], zoo_dir: Path, domains: list[str] | None = None) -> list[ScoreRow]:
    """Exact match of each model (name → HF model dir) on each domain's ``eval.jsonl`` in ``zoo_dir``."""
    domains = domains or domain_names(zoo_dir)
    data = {d: read_jsonl(Path(zoo_dir) / "domains" / d / "eval.jsonl") for d in domains}
    rows = []
    with Progress("zoo: scoring", len(model_dirs) * len(domains), unit="scores") as bar:
        for name, model_dir in model_dirs.items():
            check_loadable(Path(model_dir))  # a user's dir may be listed too: no pickle, no FIFO
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
            tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
            for d in domains:
                rows.append(ScoreRow(model=name, domain=d, exact_match=round(exact_match(model, tok, data[d]), 4)))
                bar.advance(1, f"{name} on {d}")
    return rows


def format_table(rows: list[ScoreRow]) -> str:
    """Models as rows, domains as columns, exact match with two decimals."""
    models = list(dict.fromkeys(r.model for r in rows))
    domains = list(dict.fromkeys(r.domain for r in rows))
    value = {(r.model, r.domain): r.exact_match for r in rows}
    width = max(len(m) for m in models + ["model"])
    lines = ["model".ljust(width) + "".join(f"  {d:>7}" for d in domains)]
    for m in models:
        lines.append(m.ljust(width) + "".join(f"  {value[m, d]:>7.2f}" for d in domains))
    return "\n".join(lines)
