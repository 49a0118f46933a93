"""Parents with different tokenizers: embedding and head rows mapped by token string."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from flows.cli import cli
from merge.recipe import parse_recipe
from merge.run import run_merge

VOCAB_TENSORS = ("model.embed_tokens.weight", "lm_head.weight")


def _vocab(d: Path) -> dict[str, int]:
    doc = json.loads((d / "tokenizer.json").read_text())
    return {**doc["model"]["vocab"], **{t["content"]: t["id"] for t in doc["added_tokens"]}}


def _linear(*dirs: Path, source: str | None) -> dict:
    doc = {"merge_method": "linear", "base_model": str(dirs[0]),
           "models": [{"model": str(d), "parameters": {"weight": 0.5}} for d in dirs]}
    return {**doc, "tokenizer_source": source} if source else doc


@pytest.fixture(scope="module")
def extra_token_model(tiny_zoo, tmp_path_factory) -> Path:
    """The zoo's sort specialist with one more token, '<extra>', and a row for it."""
    d = tmp_path_factory.mktemp("extra") / "sort-extra"
    shutil.copytree(Path(tiny_zoo) / "models" / "sort", d)
    tok = json.loads((d / "tokenizer.json").read_text())
    n = len(_vocab(d))
    tok["added_tokens"].append({"id": n, "content": "<extra>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    (d / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "vocab_size": n + 1}))
    tensors = load_file(d / "model.safetensors")
    for name in VOCAB_TENSORS:
        tensors[name] = torch.cat([tensors[name], torch.full((1, tensors[name].shape[1]), 7.0)])
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def test_permuted_vocabulary_rows_are_aligned_by_token(tiny_zoo, tmp_path):
    base, odd = Path(tiny_zoo) / "models" / "base", Path(tiny_zoo) / "models" / "odd-tokenizer"
    out = run_merge(parse_recipe(yaml.safe_dump(_linear(base, odd, source="base"))), tmp_path / "m", progress=False).out_dir
    m, a, b = (load_file(d / "model.safetensors") for d in (out, base, odd))
    va, vb = _vocab(base), _vocab(odd)
    assert va != vb
    for name in VOCAB_TENSORS:
        expected = torch.stack([(a[name][va[t]] + b[name][vb[t]]) / 2 for t in sorted(va, key=va.get)])
        assert torch.allclose(m[name], expected, atol=1e-6)
    assert (out / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()


def test_without_tokenizer_source_different_vocabularies_are_refused(tiny_zoo, tmp_path):
    base, odd = Path(tiny_zoo) / "models" / "base", Path(tiny_zoo) / "models" / "odd-tokenizer"
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(_linear(base, odd, source=None)))
    result = CliRunner().invoke(cli, ["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "tokenizer_source" in result.output and not (tmp_path / "out").exists()


def test_union_vocabulary_adds_tokens_and_fills_missing_rows(tiny_zoo, extra_token_model, tmp_path):
    base = Path(tiny_zoo) / "models" / "base"
    out = run_merge(parse_recipe(yaml.safe_dump(_linear(base, extra_token_model, source="union"))),
                    tmp_path / "u", progress=False).out_dir
    m, a = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    n = len(_vocab(base))
    assert json.loads((out / "config.json").read_text())["vocab_size"] == n + 1
    assert _vocab(out)["<extra>"] == n
    for name in VOCAB_TENSORS:
        assert m[name].shape[0] == n + 1
        # the base lacks '<extra>': it votes with the mean of its rows
        assert torch.allclose(m[name][n], (a[name].mean(0) + 7.0) / 2, atol=1e-6)
    # with tokenizer_source: base the extra token is dropped
    out_b = run_merge(parse_recipe(yaml.safe_dump(_linear(base, extra_token_model, source="base"))),
                      tmp_path / "b", progress=False).out_dir
    assert load_file(out_b / "model.safetensors")["lm_head.weight"].shape[0] == n


def test_a_tokenizer_without_a_vocabulary_is_one_error_line(tiny_zoo, extra_token_model, tmp_path):
    """A tokenizer.json whose model holds no vocab (here a model type we cannot read) cannot be
    aligned: refused with one line naming the file, before any weight is read."""
    base = Path(tiny_zoo) / "models" / "base"
    novocab = tmp_path / "novocab"
    shutil.copytree(extra_token_model, novocab)
    tok = json.loads((novocab / "tokenizer.json").read_text())
    tok["model"] = {"type": "Custom"}
    (novocab / "tokenizer.json").write_text(json.dumps(tok))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(_linear(base, novocab, source="union")))
    result = CliRunner().invoke(cli, ["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "tokenizer.json" in lines[0] and "'Custom'" in lines[0] and "no vocabulary" in lines[0]
    assert not (tmp_path / "out").exists()
