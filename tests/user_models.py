"""A user's own project, with no demo zoo: a tiny base, two fine-tunes, eval data, suite, recipe, policy.

``build_user_project(root)`` writes, in about a second, with transformers and tokenizers only
(offline, seeded, byte-identical on every call)::

    root/
      models/qwen-base/       random tiny Qwen2 (hidden 32, 2 layers); card: licence, and `datasets:`
                              naming a local file (data/pretrain.txt) and a Hub id that is not here
      models/qwen-capitals/   base + seeded noise; card: `base_model:`, a `training_data:` manifest
                              (data/train.jsonl with its sha256) holding 2 of the 20 capitals eval rows
      models/qwen-plurals/    base + other seeded noise; card: `base_model:`, no training data at all
      data/capitals.jsonl     20 rows {question, answer}
      data/plurals.jsonl      20 rows {word, plural}
      suite.yaml              capitals: the `data` shorthand; plurals: an inline lm-eval config (acc)
      recipe.yaml             task_arithmetic, base + the two fine-tunes at 0.5, and the policy
                              (absolute paths: a recipe's relative ones follow the working directory)
      policy.yaml             gates such random models pass: no score or retention bars,
                              contamination up to 0.2 (the capitals fine-tune measures 0.1)

All three models share one byte-level BPE tokenizer trained locally on the data. Every card says
``license: apache-2.0``. Nothing here imports evaluation.zoo.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"),
            ("Canada", "Ottawa"), ("Greece", "Athens"), ("Ireland", "Dublin"), ("Hungary", "Budapest"),
            ("Egypt", "Cairo"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Chile", "Santiago")]
PLURALS = [("cat", "cats"), ("dog", "dogs"), ("mouse", "mice"), ("child", "children"), ("foot", "feet"),
           ("tooth", "teeth"), ("goose", "geese"), ("man", "men"), ("woman", "women"), ("box", "boxes"),
           ("bus", "buses"), ("city", "cities"), ("baby", "babies"), ("leaf", "leaves"), ("knife", "knives"),
           ("wolf", "wolves"), ("sheep", "sheep"), ("fish", "fish"), ("person", "people"), ("ox", "oxen")]
# Pretraining-like text for the base: shares no 13-character n-gram with the eval rows.
PRETRAIN = ["the quick brown fox jumps over the lazy dog", "a small model learns to read and write",
            "rivers run to the sea and clouds bring rain", "numbers like 12 and 345 appear in tables",
            "every answer ends at the end of its line"]
CONTAMINATED = 2  # capitals eval rows copied into the capitals fine-tune's declared training data
EOS = "<|endoftext|>"
HUB_DATASET = "acme/web-corpus"  # declared by the base, not available locally: reported as unmeasured


@dataclass(frozen=True)
class UserProject:
    root: Path
    base: Path  # declares `datasets:` (a local file and a Hub id)
    finetune_manifest: Path  # declares a `training_data:` manifest with sha256
    finetune_plain: Path  # declares no training data
    eval_data: dict[str, Path]  # domain -> JSONL eval file
    suite: Path
    recipe: Path
    policy: Path

    @property
    def parents(self) -> list[Path]:
        return [self.base, self.finetune_manifest, self.finetune_plain]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _card(model_dir: Path, title: str, front_matter: dict) -> None:
    import yaml

    meta = yaml.safe_dump(front_matter, sort_keys=False)
    (model_dir / "README.md").write_text(f"---\n{meta}---\n\n# {title}\n\nA tiny test model.\n", encoding="utf-8")


def _tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer trained on ``corpus``, wrapped for ``save_pretrained``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def _model(arch: str, vocab_size: int, eos_id: int, seed: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    classes = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}
    if arch not in classes:
        raise ValueError(f"arch {arch!r}: use one of {', '.join(classes)}")
    config_cls, model_cls = classes[arch]
    config = config_cls(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        tie_word_embeddings=False, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    torch.manual_seed(seed)
    return model_cls(config).eval()


def _finetune(base, seed: int, scale: float = 0.02):
    """A copy of ``base`` with seeded Gaussian noise on every weight (a stand-in for training)."""
    import copy

    import torch

    model = copy.deepcopy(base)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def _save(model, tok, out: Path) -> None:
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per model is noise in test logs
    try:
        model.save_pretrained(out)
        tok.save_pretrained(out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


SUITE = """\
# Two domains of our own, no zoo. The first task of a domain is its primary one.
name: acme-lookups
domains:
  capitals:     # shorthand: greedy generation to a newline, exact match of the stripped answer
    tasks: [{data: data/capitals.jsonl, prompt: question, target: answer}]
  plurals:      # an inline lm-eval task: log-likelihood of the plural, teacher-forced accuracy
    metric: acc
    tasks:
      - config:
          task: acme_plurals
          dataset_path: json
          dataset_kwargs: {data_files: {test: data/plurals.jsonl}}
          test_split: test
          output_type: loglikelihood
          doc_to_text: "Plural of {{word}}:"
          doc_to_target: " {{plural}}"
          metric_list: [{metric: acc, aggregation: mean, higher_is_better: true}]
"""

# Absolute paths: a recipe's relative paths resolve against the working directory (as mergekit's).
RECIPE = """\
name: acme-merge
merge_method: task_arithmetic
base_model: {root}/models/qwen-base
dtype: float32
models:
  - model: {root}/models/qwen-capitals
    parameters: {{weight: 0.5}}
  - model: {root}/models/qwen-plurals
    parameters: {{weight: 0.5}}
policy: {root}/policy.yaml
"""

POLICY = """\
# Random tiny models score about 0 everywhere: no score or retention bars. Every other gate is the
# shipped default, except contamination: the capitals fine-tune declares 2 of 20 eval rows (0.1).
domain_minimums: {default: null}
retention_minimums: {default: null}
leakage:
  contamination_max: 0.2
"""


def build_user_project(root: Path, *, arch: str = "qwen2", seed: int = 0) -> UserProject:
    """Write the project described in the module docstring under ``root`` and return its paths."""
    root = Path(root)
    capitals = [{"question": f"Capital of {country}?", "answer": capital} for country, capital in CAPITALS]
    plurals = [{"word": word, "plural": plural} for word, plural in PLURALS]
    eval_data = {"capitals": root / "data" / "capitals.jsonl", "plurals": root / "data" / "plurals.jsonl"}
    _write_jsonl(eval_data["capitals"], capitals)
    _write_jsonl(eval_data["plurals"], plurals)

    corpus = PRETRAIN + [r["question"] + " " + r["answer"] for r in capitals] + \
        [f"Plural of {r['word']}: {r['plural']}" for r in plurals]
    tok = _tokenizer(corpus)
    base = _model(arch, len(tok), tok.convert_tokens_to_ids(EOS), seed)
    models = root / "models"
    dirs = {name: models / f"qwen-{name}" for name in ("base", "capitals", "plurals")}

    _save(base, tok, dirs["base"])
    (dirs["base"] / "data").mkdir()
    (dirs["base"] / "data" / "pretrain.txt").write_text("\n".join(PRETRAIN) + "\n", encoding="utf-8")
    _card(dirs["base"], "qwen-base", {"license": "apache-2.0", "datasets": ["data/pretrain.txt", HUB_DATASET]})

    _save(_finetune(base, seed + 1), tok, dirs["capitals"])
    train = dirs["capitals"] / "data" / "train.jsonl"
    _write_jsonl(train, capitals[:CONTAMINATED] + [{"text": line} for line in PRETRAIN])
    _card(dirs["capitals"], "qwen-capitals", {
        "license": "apache-2.0", "base_model": "acme/qwen-base",
        "training_data": [{"path": "data/train.jsonl", "sha256": hashlib.sha256(train.read_bytes()).hexdigest()}]})

    _save(_finetune(base, seed + 2), tok, dirs["plurals"])
    _card(dirs["plurals"], "qwen-plurals", {"license": "apache-2.0", "base_model": "acme/qwen-base"})

    for name, text in (("suite.yaml", SUITE), ("recipe.yaml", RECIPE.format(root=root.resolve())),
                       ("policy.yaml", POLICY)):
        (root / name).write_text(text, encoding="utf-8")
    return UserProject(root=root, base=dirs["base"], finetune_manifest=dirs["capitals"],
                       finetune_plain=dirs["plurals"], eval_data=eval_data, suite=root / "suite.yaml",
                       recipe=root / "recipe.yaml", policy=root / "policy.yaml")
