"""Tiny Llama models for the zoo: creation, a deterministic training loop, greedy decoding.

Determinism: the caller fixes torch's thread count; every random draw (init, batch order) comes
from a generator seeded by (seed, purpose); no dropout. Same seed, same machine → same bytes.
"""

from __future__ import annotations

import math

import torch
from tokenizers import Tokenizer
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from evaluation.zoo.lora import lora_attach, lora_merge
from evaluation.zoo.profiles import ModelShape, TrainSpec
from evaluation.zoo.tokenizer import BOS, EOS, PAD, encode
from merge.progress import Progress

IGNORE = -100


def new_model(shape: ModelShape, vocab_size: int, seed: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=False,  # separate head: merges treat embeddings and head independently
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=16, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS
    )
    return model


def encode_records(tok: Tokenizer, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` [N, L] and ``labels`` [N, L]; loss only on target + "\\n"."""
    newline = encode(tok, "\n")
    rows = []
    for rec in records:
        prompt, target = encode(tok, rec["prompt"]), encode(tok, rec["target"]) + newline
        rows.append((prompt + target, [IGNORE] * len(prompt) + target))
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
    return ids, labels


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator):
    """Indices for ``steps`` batches: shuffled epochs, fixed by ``gen``."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        yield order[:batch_size]
        order = order[batch_size:]


def train(model: LlamaForCausalLM, ids: torch.Tensor, labels: torch.Tensor, spec: TrainSpec, seed: int,
          progress: Progress | None = None) -> float:
    """Train in place (AdamW, linear warmup then cosine decay over ``spec.steps``, stopping after
    ``spec.stop_after`` steps when set); returns the last batch loss. ``progress`` advances a step at
    a time. With ``spec.lora_rank`` > 0 only low-rank adapters train, and are merged back at the end."""
    gen = torch.Generator().manual_seed(seed)
    if spec.lora_rank:
        params = lora_attach(model, spec.lora_rank, gen)
    else:
        params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < spec.warmup:
            return spec.lr * (step + 1) / spec.warmup
        progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
        return spec.lr * 0.5 * (1 + math.cos(math.pi * progress))

    model.train()
    loss = torch.tensor(float("nan"))
    steps = min(spec.steps, spec.stop_after or spec.steps)
    for step, idx in enumerate(_batches(len(ids), spec.batch_size, steps, gen)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        batch_ids, batch_labels = ids[idx], labels[idx]
        # Trim trailing all-pad columns: right padding never influences earlier positions.
        width = int((batch_labels != IGNORE).nonzero()[:, 1].max()) + 1
        loss = model(input_ids=batch_ids[:, :width], labels=batch_labels[:, :width]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if progress is not None:
            progress.advance(1, f"loss {float(loss.detach()):.3f}")
    model.eval()
    if spec.lora_rank:
        lora_merge(model)
    return float(loss.detach())


@torch.inference_mode()
def greedy_complete(model, tok: Tokenizer, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
    """Greedy continuation of each prompt up to the first "\\n" (excluded). Prompts are batched by
    token length, so no padding is involved and each result equals unbatched greedy decoding."""
    newline = encode(tok, "\n")[0]
    model.eval()
    out: dict[int, str] = {}
    by_len: dict[int, list[int]] = {}
    encoded = [encode(tok, p) for p in prompts]
    for i, ids in enumerate(encoded):
        by_len.setdefault(len(ids), []).append(i)
    for _, members in sorted(by_len.items()):
        seqs = torch.tensor([encoded[i] for i in members], dtype=torch.long)
        done = torch.zeros(len(members), dtype=torch.bool)
        generated = []
        for _ in range(max_new_tokens):
            next_ids = model(input_ids=seqs).logits[:, -1, :].argmax(-1)
            generated.append(next_ids)
            done |= next_ids == newline
            seqs = torch.cat([seqs, next_ids[:, None]], dim=1)
            if bool(done.all()):
                break
        gen = torch.stack(generated, dim=1).tolist()
        for row, i in zip(gen, members):
            if newline in row:
                row = row[: row.index(newline)]
            out[i] = tok.decode(row, skip_special_tokens=True)
    return [out[i] for i in range(len(prompts))]
