"""The zoo's character-level tokenizer, built with the ``tokenizers`` library and saved as a Hugging
Face tokenizer (``PreTrainedTokenizerFast``) so ``AutoTokenizer.from_pretrained(dir)`` loads it offline.

No BOS/EOS is added on encode: prompts are scored as raw text (lm-eval's default for HF models).
"\\n" ends every target, so it doubles as the stop string.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]
PAD, UNK, BOS, EOS = range(4)
CHARS = string.ascii_lowercase + string.digits + " =:-.,\n"


def build_tokenizer(chars: str = CHARS) -> Tokenizer:
    """One token per character of ``chars`` after the four special tokens; ``chars`` fixes the ids."""
    if len(set(chars)) != len(chars):
        raise ValueError("tokenizer characters must be distinct")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(chars))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # [\s\S] rather than "." so newline is a token too.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    special = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 64,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "padding_side": "left",
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True) + "\n")


def encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def decode(tok: Tokenizer, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=True)
