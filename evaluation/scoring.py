"""Direct model queries the leakage checks need: continuation log-likelihoods, greedy and sampled
generations. Plain torch over a loaded causal LM; no special tokens are added, as lm-eval does for
HF models with ``add_bos_token`` unset."""

from __future__ import annotations

import torch


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def continuation_logprobs(model, tok, prefix: str, continuations: list[str], batch_size: int = 256) -> list[float]:
    """log P(continuation | prefix), summed over the continuation's tokens, for each continuation."""
    pre = _ids(tok, prefix)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out: list[float] = []
    for start in range(0, len(continuations), batch_size):
        conts = [_ids(tok, c) for c in continuations[start:start + batch_size]]
        seqs = [pre + c for c in conts]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        for i, c in enumerate(conts):
            # token t of the continuation sits at position len(pre)+t, predicted from the one before
            pos = torch.arange(len(pre) - 1, len(pre) - 1 + len(c))
            out.append(float(logp[i, pos, torch.tensor(c)].sum()))
    return out


@torch.no_grad()
def greedy(model, tok, prompt: str, max_new_tokens: int) -> str:
    ids = torch.tensor([_ids(tok, prompt)], device=model.device)
    gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
    return tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def sample(model, tok, prompts: list[str], n: int, max_new_tokens: int, seed: int) -> list[list[str]]:
    """``n`` generations per prompt at temperature 1 (no top-k/top-p), in one left-padded batch,
    reproducible for a given seed."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    seqs = [_ids(tok, p) for p in prompts]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        gen = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=True,
                             temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=n,
                             max_new_tokens=max_new_tokens, pad_token_id=pad)
    texts = [tok.decode(g[width:], skip_special_tokens=True) for g in gen]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
