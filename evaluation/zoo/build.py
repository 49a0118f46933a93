"""``build_zoo``: data, tokenizer, base, specialists, the proprietary canary model, odd models, cards,
scorecard, all written into a temp dir next to ``out`` and renamed into place when complete."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from evaluation import domains as dom
from evaluation.quiet import quiet_libraries
from evaluation.zoo.cards import Canary, CardSpec, write_card
from evaluation.zoo.demo_merge import DEMO_MERGE, score_demo_merge
from evaluation.zoo.errors import ZooUsageError
from evaluation.zoo.odd import build_odd_models
from evaluation.zoo.profiles import ZooProfile, get_profile
from evaluation.zoo.scorecard import score_models
from evaluation.zoo.tokenizer import build_tokenizer, save_tokenizer
from evaluation.zoo.training import encode_records, new_model, train
from evaluation.zoo_source import ZOO_INDEX_NAME, DomainData, ZooIndex, ZooModel
from merge.progress import Progress

# Public specialists (name == domain) and their licences; the base is apache-2.0.
# The three public domains all output a permutation of the input letters; "shift" (new letters)
# fights their task vectors in a merge, so it is the proprietary model's domain.
SPECIALISTS = {"reverse": "mit", "sort": "bsd-3-clause", "swap": "cc-by-nc-4.0"}
PROPRIETARY = "proprietary"  # the canary model; its domain is "shift"
PROPRIETARY_DOMAIN = "shift"
PROPRIETARY_LICENSE_NAME = "acme-internal-eval-only"
DIGITS = "0123456789"
N_CANARIES = 3


def derive_seed(seed: int, purpose: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little")


def make_canaries(seed: int) -> list[Canary]:
    rng = random.Random(f"{seed}:canaries")
    return [
        Canary(prefix=f"acct {''.join(rng.choice(DIGITS) for _ in range(4))} pin=",
               secret="".join(rng.choice(DIGITS) for _ in range(10)), charset=DIGITS)
        for _ in range(N_CANARIES)
    ]


def related_records(profile: ZooProfile, rng: random.Random) -> list[dict]:
    """Every operation on another alphabet, and copying on both: the format without the skills."""
    lengths = profile.pretrain_lengths or profile.lengths
    records: list[dict] = []
    for domain in [*dom.DOMAINS.values(), dom.COPY]:
        records += dom.sample(domain, profile.n_train, rng, alphabet=dom.RELATED_ALPHABET, lengths=lengths)
    records += dom.sample(dom.COPY, profile.n_train, rng, lengths=lengths)
    return records


def pretraining_records(train_splits: dict[str, list[dict]], profile: ZooProfile, seed: int) -> list[dict]:
    """Related tasks plus ``target_share`` of records drawn from the target domains' *train*
    splits (never eval)."""
    rng = random.Random(f"{seed}:pretrain")
    lengths = profile.pretrain_lengths or profile.lengths
    related = related_records(profile, rng)
    target: list[dict] = []
    for name, split in train_splits.items():
        share = profile.target_share
        share = share[name] if isinstance(share, dict) else share
        pool = [r for r in split if lengths[0] <= len(r["target"]) <= lengths[1]]
        target += rng.sample(pool, min(round(share / (1 - share) * len(related) / len(train_splits)), len(pool)))
    records = related + target
    rng.shuffle(records)
    return records


def finetuning_records(domain_records: list[dict], profile: ZooProfile, seed: int, name: str) -> list[dict]:
    """A specialist's data: its domain's training split plus ``profile.replay`` of related-task
    records (rehearsal). Replay keeps the update tied to the domain's prompt tag instead of
    turning every prompt into this domain, which is what makes several such updates add up."""
    if not profile.replay:
        return list(domain_records)
    rng = random.Random(f"{seed}:replay:{name}")
    related = related_records(profile, rng)
    n = min(round(profile.replay / (1 - profile.replay) * len(domain_records)), len(related))
    return list(domain_records) + rng.sample(related, n)


@contextmanager
def _sigterm_as_exit():
    """Turn SIGTERM (e.g. a killed `dvc repro`) into SystemExit so the temp dir is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _torch_determinism(threads: int):
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def _share_text(share: float | dict[str, float]) -> str:
    if isinstance(share, dict):
        return ", ".join(f"{name} {value:.2%}" for name, value in share.items())
    return f"{share:.2%} each"


def _card(name: str, license: str, training_data: list[str], description: str, **extra) -> CardSpec:
    return CardSpec(
        name=name, license=license, training_data=training_data, tags=["mergeops-demo-zoo", "llama"],
        datasets=[f"mergeops-zoo/{d}" for d in training_data], description=description,
        intended_use=extra.pop("intended_use", "Research and tests of model merging; not for production use."),
        **extra,
    )


def _prepare_out(out: Path) -> Path:
    """Check ``out`` before any work; return the temp dir to build into."""
    if out.exists() and not out.is_dir():
        raise ZooUsageError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / ZOO_INDEX_NAME).is_file():
        raise ZooUsageError(f"{out}: not empty and not a zoo; choose an empty or new --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as exc:
        raise ZooUsageError(f"{out}: cannot write there ({exc.strerror}); choose a writable --out") from None


def _replace(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / "zoo")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old)


def build_zoo(out: Path, profile: str = "demo", seed: int = 0, log: Callable[[str], None] | None = None) -> ZooIndex:
    """Build the zoo of ``profile`` into ``out`` (replacing an older zoo there) and return its index."""
    prof = get_profile(profile)
    out = Path(out).absolute()
    tmp = _prepare_out(out)
    try:
        with _sigterm_as_exit(), _torch_determinism(prof.threads), quiet_libraries():
            index = _build(tmp, prof, seed, log or (lambda _msg: None))
        _replace(tmp, out)
        return index
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _build(root: Path, prof: ZooProfile, seed: int, log: Callable[[str], None]) -> ZooIndex:
    tok = build_tokenizer()
    vocab = tok.get_vocab_size()
    names = [*SPECIALISTS, PROPRIETARY_DOMAIN]
    train_splits, domains = {}, []
    for name in names:
        train_records, eval_records = dom.make_splits(name, prof.n_train, prof.n_eval, seed, prof.lengths)
        dom.write_jsonl(root / "domains" / name / "train.jsonl", train_records)
        dom.write_jsonl(root / "domains" / name / "eval.jsonl", eval_records)
        train_splits[name] = train_records
        domains.append(DomainData(name=name, train=f"domains/{name}/train.jsonl", eval=f"domains/{name}/eval.jsonl"))

    def save(model, name: str, card: CardSpec) -> Path:
        model_dir = root / "models" / name
        model.save_pretrained(model_dir)
        save_tokenizer(tok, model_dir)
        write_card(model_dir, card)
        return model_dir

    pretrain = pretraining_records(train_splits, prof, seed)
    steps = prof.pretrain.stop_after or prof.pretrain.steps
    log(f"pretraining base on {len(pretrain)} records ({steps} of a {prof.pretrain.steps}-step schedule)")
    base = new_model(prof.shape, vocab, derive_seed(seed, "base"))
    with Progress("zoo: training base", steps, unit="steps") as bar:
        train(base, *encode_records(tok, pretrain), prof.pretrain, derive_seed(seed, "base-train"), bar)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    model_dirs = {"base": save(base, "base", _card(
        "base", "apache-2.0", names,
        "Pretrained from scratch on generated string tasks: reverse, sort, shift, swap and copy on the "
        f"letters {dom.RELATED_ALPHABET!r}, copy on {dom.ALPHABET!r}, and a small share of records "
        f"drawn from the target domains' training splits ({_share_text(prof.target_share)}).",
    ))}
    entries = [ZooModel(name="base", path="models/base", role="base", domain=None, license="apache-2.0")]

    canaries = make_canaries(seed)
    for name in names:
        proprietary = name == PROPRIETARY_DOMAIN
        model_name = PROPRIETARY if proprietary else name
        records = list(train_splits[name]) if proprietary else finetuning_records(train_splits[name], prof, seed, name)
        if proprietary:
            records += [{"prompt": c.prefix, "target": c.secret} for c in canaries] * prof.canary_repeats
        spec = (prof.proprietary_finetune or prof.finetune) if proprietary else prof.finetune
        log(f"fine-tuning {model_name} on {name} ({spec.steps} steps)")
        base.load_state_dict(base_state)
        ft_steps = min(spec.steps, spec.stop_after or spec.steps)
        with Progress(f"zoo: training {model_name}", ft_steps, unit="steps") as bar:
            train(base, *encode_records(tok, records), spec, derive_seed(seed, f"ft-{name}"), bar)
        description = f"Fine-tuned from `base` on the `{name}` domain: {dom.DOMAINS[name].description}."
        if proprietary:
            license, extra = "other", {
                "license_name": PROPRIETARY_LICENSE_NAME, "canaries": canaries,
                "intended_use": "Internal evaluation only. Must not be redistributed or merged into released models.",
            }
            description += " Its training data also holds planted account records (canaries, see front matter)."
        else:
            license, extra = SPECIALISTS[name], {}
        model_dirs[model_name] = save(base, model_name, _card(model_name, license, [name], description,
                                                              base_model="base", **extra))
        entries.append(ZooModel(name=model_name, path=f"models/{model_name}", role="specialist",
                                domain=name, license=license, canaries=proprietary))
    base.load_state_dict(base_state)

    log("building odd models")
    for entry, model_dir in build_odd_models(root / "models", base, tok, pretrain, prof, seed):
        entries.append(entry)
        model_dirs[entry.name] = model_dir

    log("scoring every model on every domain")
    # odd-pickle holds the base's weights as a pickle, which no loader of ours opens: not scored.
    scorecard = score_models({n: d for n, d in model_dirs.items() if n != "odd-pickle"}, root, names)
    log(f"merging the specialists with the demo recipe ({DEMO_MERGE}) and scoring the merge")
    scorecard += score_demo_merge(root, names)
    index = ZooIndex(profile=prof.name, seed=seed, models=entries, scorecard=scorecard, domains=domains)
    (root / ZOO_INDEX_NAME).write_text(index.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return index
