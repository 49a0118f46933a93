"""Calibration statistics for the data-aware merge methods (merge/ itself never runs a model).

* ``fisher``: diagonal empirical Fisher, F = mean over examples of (d log p(target | prompt) / dθ)²,
  one tensor per weight, same name and shape (for ``merge_method: fisher``).
* ``gram``: RegMean Gram matrices, G = Σ xᵀx over every token's input x [in] to each nn.Linear,
  divided by the token count, stored under the linear layer's weight name (for ``regmean``).

Both are written as one safetensors file that a recipe names in the parent's ``statistics``
parameter. Calibration data: JSONL lines ``{"prompt", "target"}`` (a zoo domain's train.jsonl).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from evaluation.quiet import quiet_libraries
from merge.bounded import MIB, read_text
from merge.errors import UsageError
from merge.manifest import content_id, sha256_file
from merge.model_dir import check_loadable


def _examples(path: Path, samples: int) -> list[tuple[str, str]]:
    text = read_text(path, limit=256 * MIB, what="calibration JSONL")  # bounded: not a FIFO or /dev/zero
    try:
        lines = [json.loads(x) for x in text.splitlines() if x.strip()]
        examples = [(str(x["prompt"]), str(x["target"])) for x in lines[:samples]]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise UsageError(f"{path}: not calibration JSONL of {{'prompt', 'target'}} lines ({str(exc)[:80]})") from None
    if not examples:
        raise UsageError(f"{path}: no calibration examples")
    return examples


def _encode(tok, prompt: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    t = tok(target + "\n", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + t])
    labels = torch.tensor([[-100] * len(p) + t])  # only the continuation is scored
    return ids, labels


def check_out(out: Path, what: str) -> None:
    """Refuse a statistics path that is a symbolic link, a directory or a special file."""
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise UsageError(f"{out}: {what} is a symbolic link, a directory or a special file; give the path of a "
                         "new or regular .safetensors file")


def load_model(model_dir: Path):
    """``(tokenizer, model)`` of ``model_dir`` in float32, in eval mode, after ``check_loadable``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_loadable(model_dir)  # no pickle under any name, no FIFO or /dev/zero, before transformers
    with quiet_libraries():  # no "Loading weights" bar in a log
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, use_safetensors=True)
    return tok, model.eval()


def temp_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp-{os.getpid()}")


def write_temp(out: Path, stats: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write ``stats`` beside ``out`` at ``temp_path(out)`` (the caller renames it into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(out)
    save_file({k: v.contiguous() for k, v in stats.items()}, str(tmp), metadata=metadata)
    return tmp


def compute_statistics(model_dir: Path, data: Path, *, kind: str, out: Path, samples: int = 32) -> Path:
    """Compute ``kind`` ("fisher" | "gram") statistics of ``model_dir`` on ``data``; write ``out``."""
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if kind not in ("fisher", "gram"):
        raise UsageError(f"unknown statistics kind {kind!r}; use fisher or gram")
    out = Path(out)
    check_out(out, "--out")
    examples = _examples(data, samples)
    tok, model = load_model(model_dir)
    stats = _fisher(model, tok, examples) if kind == "fisher" else _gram(model, tok, examples)
    # Which model and data they describe: a merge refuses statistics of another version of its parent.
    metadata = {"mergeops.statistics": kind, "mergeops.model_content_id": content_id(model_dir),
                "mergeops.data_sha256": sha256_file(data), "mergeops.samples": str(len(examples))}
    write_temp(out, stats, metadata).replace(out)
    return out


def _fisher(model, tok, examples) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    for prompt, target in examples:
        ids, labels = _encode(tok, prompt, target)
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=labels).loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                acc[n] += p.grad.detach() ** 2
    return {n: a / len(examples) for n, a in acc.items()}


def _gram(model, tok, examples) -> dict[str, torch.Tensor]:
    grams: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name):
        def fn(_module, inputs, _output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            grams[name] = grams.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_hook(hook(f"{name}.weight")))
    try:
        with torch.no_grad():
            for prompt, target in examples:
                ids, _ = _encode(tok, prompt, target)
                model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return {n: (g / counts[n]).float() for n, g in grams.items()}
