"""Score weights held in memory on dev records: per-example exact match, greedy decoding to "\\n".

The same rule as the zoo's scorecard and the suites' generation tasks (the stripped continuation
must equal the target), without writing a model to disk: one model object is built from a model
directory's config and tokenizer, and each candidate's tensors are loaded into it in place. Prompts
are batched by token length, so no padding is involved and each result equals unbatched greedy
decoding. Returns a 0/1 vector per example, the score matrix row M2N2 needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM

from evaluation.errors import ModelLoadError


class DevScorer:
    def __init__(self, model_dir: Path, records: list[dict], *, max_new_tokens: int = 16,
                 batch_size: int = 256, device: str = "cpu"):
        model_dir = Path(model_dir)
        tok_file = model_dir / "tokenizer.json"
        if not tok_file.is_file():
            raise ModelLoadError(f"{model_dir}: no tokenizer.json; in-memory scoring reads a fast tokenizer")
        self.tok = Tokenizer.from_file(str(tok_file))
        config = AutoConfig.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).to(device).eval()
        self.device, self.max_new_tokens, self.batch_size = device, max_new_tokens, batch_size
        self.targets = [r["target"] for r in records]
        self.newline = self.tok.encode("\n", add_special_tokens=False).ids[0]
        self._groups: dict[int, list[int]] = {}
        self._ids = [self.tok.encode(r["prompt"], add_special_tokens=False).ids for r in records]
        for i, ids in enumerate(self._ids):
            self._groups.setdefault(len(ids), []).append(i)
        self._names = set(self.model.state_dict())

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        """Put ``tensors`` (the model's full state, by name) into the model."""
        missing = self._names - set(tensors)
        if missing:  # tied or non-persistent buffers are not in the state dict, so this is real
            raise ModelLoadError(f"merged weights lack {len(missing)} of the model's tensors, e.g. {sorted(missing)[0]!r}")
        self.model.load_state_dict({k: v for k, v in tensors.items() if k in self._names}, strict=True)

    def __call__(self, tensors: dict[str, torch.Tensor]) -> np.ndarray:
        """1.0 where the stripped greedy continuation equals the target, else 0.0, per record."""
        return np.array([o.strip() == t for o, t in zip(self.complete(tensors), self.targets)], dtype=float)

    @torch.inference_mode()
    def complete(self, tensors: dict[str, torch.Tensor]) -> list[str]:
        """Each record's greedy continuation up to the first "\\n" (excluded) under ``tensors``."""
        self.load(tensors)
        outputs: dict[int, list[int]] = {}
        for _, members in sorted(self._groups.items()):
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                for i, row in zip(chunk, self._greedy(chunk)):
                    outputs[i] = row
        return [self.tok.decode(outputs[i], skip_special_tokens=True) for i in range(len(self.targets))]

    def _greedy(self, members: list[int]) -> list[list[int]]:
        seqs = torch.tensor([self._ids[i] for i in members], dtype=torch.long, device=self.device)
        done = torch.zeros(len(members), dtype=torch.bool, device=self.device)
        past, step_in, generated = None, seqs, []
        for _ in range(self.max_new_tokens):
            out = self.model(input_ids=step_in, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1, :].argmax(-1)
            generated.append(nxt)
            done |= nxt == self.newline
            if bool(done.all()):
                break
            step_in = nxt[:, None]
        rows = torch.stack(generated, dim=1).tolist()
        return [row[:row.index(self.newline)] if self.newline in row else row for row in rows]
