"""Build profiles: the demo zoo (meets the quality bar, minutes) and the tiny zoo (tests, seconds).

Why the demo numbers are what they are: merging fine-tunes only works when they stay in one basin,
so the base is pretrained on related tasks (the same operations on another alphabet, plus copying)
*and* a small share of each target domain, and specialists are short, low-learning-rate fine-tunes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from evaluation.zoo.errors import ZooUsageError


Share = Annotated[float, Field(ge=0.0, lt=1.0)]


class ModelShape(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 64


class TrainSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 0.0
    warmup: int = 0
    lora_rank: int = 0  # 0: full fine-tune; >0: low-rank update of every linear, merged back


class ZooProfile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    shape: ModelShape
    odd_hidden_size: int  # odd-shape's hidden size (differs from shape.hidden_size)
    lengths: tuple[int, int] = (4, 7)  # input lengths of the domains' train and eval records
    # Pretraining sees only these input lengths (None: all of ``lengths``): the base then holds each
    # skill on short strings only, and specialists extend it to the long ones.
    pretrain_lengths: tuple[int, int] | None = None
    n_train: int  # per-domain training records
    n_eval: int  # per-domain held-out records
    pretrain: TrainSpec
    # Share of target-domain records in pretraining, overall or per domain.
    target_share: Share | dict[str, Share]
    finetune: TrainSpec
    canary_repeats: int  # how often each canary appears per fine-tune epoch of the proprietary model
    odd_steps: int  # the odd models only need to exist and load, not to be good
    threads: int = 1  # torch threads; 1 keeps float reductions in a fixed order


PROFILES: dict[str, ZooProfile] = {
    p.name: p
    for p in (
        ZooProfile(
            name="tiny",
            shape=ModelShape(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
            odd_hidden_size=48,
            n_train=256,
            n_eval=16,
            pretrain=TrainSpec(steps=30, lr=3e-3, batch_size=32),
            target_share=0.1,
            finetune=TrainSpec(steps=10, lr=1e-3, batch_size=32, lora_rank=2),
            canary_repeats=4,
            odd_steps=2,
        ),
        ZooProfile(
            name="demo",
            shape=ModelShape(),
            odd_hidden_size=96,
            n_train=4000,
            n_eval=200,
            pretrain=TrainSpec(steps=1500, lr=2e-3, batch_size=64, warmup=50),
            # Measured: 1% of target data leaves the base near 0 on every domain and merges of
            # specialists collapse to 0; 6% makes the base nearly as good as the specialists.
            target_share=0.03,
            # Rank-4 updates learn each domain to >= 0.96 in 300 steps while keeping task vectors small.
            finetune=TrainSpec(steps=300, lr=1e-3, batch_size=64, lora_rank=4),
            canary_repeats=16,
            odd_steps=5,
        ),
    )
}


def get_profile(name: str) -> ZooProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ZooUsageError(f"unknown zoo profile {name!r}; use one of: {', '.join(sorted(PROFILES))}") from None
