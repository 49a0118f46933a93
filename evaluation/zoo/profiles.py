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
    # Stop after this many of the schedule's ``steps`` (None: run it all): a checkpoint taken
    # while the learning rate is still high, e.g. a base whose skills are still forming.
    stop_after: int | None = Field(default=None, ge=1)


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
    # Share of each public specialist's fine-tuning records that replay related pretraining tasks.
    replay: Share = 0.0
    canary_repeats: int  # how often each canary appears per fine-tune epoch of the proprietary model
    # The proprietary model's fine-tune (None: ``finetune``). It is never in the demo merge, and a
    # low-rank update does not learn 10-digit secrets verbatim, which the leakage checks need.
    proprietary_finetune: TrainSpec | None = None
    odd_steps: int  # the odd models only need to exist and load, not to be good
    threads: int = 1  # torch threads; 1 keeps float reductions in a fixed order


PROFILES: dict[str, ZooProfile] = {
    p.name: p
    for p in (
        ZooProfile(
            name="tiny",
            shape=ModelShape(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
            odd_hidden_size=48,
            pretrain_lengths=(4, 5),
            n_train=256,
            n_eval=16,
            pretrain=TrainSpec(steps=30, lr=3e-3, batch_size=32),
            target_share={"reverse": 0.1, "sort": 0.1, "shift": 0.1, "swap": 0.1},
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
            # The base is the checkpoint 550 steps into a 1500-step schedule: its skills are still
            # forming. Measured (seed 0, greedy exact match on 100 eval prompts per domain), a base
            # that finishes the schedule holds each skill all or nothing: reverse 1.35% / sort 2% /
            # swap and shift 1.15% end at 0.99 / 0.65 / 0.99 / 1.00, and 0.1 points less share ends
            # near 0.05, where every merge of the three specialists keeps only 21-28%. Mid-schedule
            # the skills rise gradually and together (sort needs the larger share to keep up);
            # reverse / sort / swap / shift with these shares at step 500: 0.19 / 0.08 / 0.37 / 0.00,
            # 550: 0.23 / 0.18 / 0.47 / 0.06, 600: 0.25 / 0.09 / 0.56 / 0.14, 800: 0.64 / 0.33 / 0.70 /
            # 0.39 (from the step-800 base the demo merge kept 95-96%, but the base was above half).
            pretrain=TrainSpec(steps=1500, stop_after=550, lr=2e-3, batch_size=64, warmup=50),
            target_share={"reverse": 0.0135, "sort": 0.04, "swap": 0.009, "shift": 0.0115},
            # Low-rank, low-lr updates keep each task vector small; replaying related tasks keeps it
            # tied to its prompt tag. With this profile (200 eval prompts), merges of the three keep
            # (reverse / sort / swap): task arithmetic 0.5 each 82 / 67 / 95%; ties (density 0.5,
            # weight 1) 76 / 77 / 91%; the then demo recipe 74 / 78 / 90%. (Those were measured
            # before the build held its kernels to AVX2, on a machine whose choice they were; as
            # built now, recipes/demo.yaml keeps 64 / 66 / 83%.) Without replay, from an
            # earlier mix's step-400 base, weight 0.5 each kept 75 / 40 / 63% where replay gave
            # 82 / 36 / 92% (100 prompts).
            finetune=TrainSpec(steps=300, lr=5e-4, batch_size=64, lora_rank=8),
            replay=0.5,
            canary_repeats=150,
            proprietary_finetune=TrainSpec(steps=400, lr=1e-3, batch_size=64),
            odd_steps=5,
        ),
    )
}


def get_profile(name: str) -> ZooProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ZooUsageError(f"unknown zoo profile {name!r}; use one of: {', '.join(sorted(PROFILES))}") from None
