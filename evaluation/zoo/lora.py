"""Low-rank (LoRA-style) fine-tuning, merged back into plain weights.

A low-rank update ΔW = B·A (B: [out, r], A: [r, in], B starts at zero) keeps each fine-tune's task
vector small and structured, which is what lets several of them be added to one base without
wrecking each other (Hu et al. 2021, https://arxiv.org/abs/2106.09685). After training the update
is folded into ``weight`` so the saved model is an ordinary LlamaForCausalLM.
"""

from __future__ import annotations

import torch
from torch import nn


class _LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, gen: torch.Generator):
        super().__init__()
        self.base = base
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, generator=gen) / base.in_features**0.5)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T) @ self.lora_b.T

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += self.lora_b @ self.lora_a
        return self.base


def _linears(model: nn.Module):
    # Every projection inside the transformer blocks; embeddings, norms and the head stay frozen.
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, nn.Linear) and ".layers." in f"{name}.":
                yield module, child_name, child


def lora_attach(model: nn.Module, rank: int, gen: torch.Generator) -> list[nn.Parameter]:
    """Freeze ``model`` and wrap each block linear with a trainable rank-``rank`` adapter."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for parent, child_name, child in list(_linears(model)):
        wrapped = _LoRALinear(child, rank, gen)
        setattr(parent, child_name, wrapped)
        params += [wrapped.lora_a, wrapped.lora_b]
    return params


def lora_merge(model: nn.Module) -> None:
    """Fold every adapter into its linear's weight and unfreeze the model."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, _LoRALinear):
                setattr(module, child_name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
