"""Permutation alignment (recipe key ``align: weight_matching``): a permuted model computes the same
function, the merge engine applies and records the alignment, what cannot be aligned is refused in
one line, and on two models trained from different seeds the aligned average is the better one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

transformers = pytest.importorskip("transformers")

from flows.cli import cli  # noqa: E402
from merge.align import infer_spec, permute, weight_matching  # noqa: E402
from merge.errors import CompatibilityError, RecipeError  # noqa: E402
from merge.recipe import parse_recipe  # noqa: E402
from merge.run import ALIGNMENT_NAME, run_merge  # noqa: E402
from merge.structure import infer_structure  # noqa: E402

DEC = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# Llama (GQA), Qwen2 (q/k/v biases), Qwen3 (per-head q/k norms), Gemma2 (four norms per layer)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8}),
}


def _model(family: str, seed: int, **extra):
    config_cls, model_cls, kw = FAMILIES[family]
    config = getattr(transformers, config_cls)(**{**DEC, **kw, **extra})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # norms start at exactly 1 and biases at 0: make every tensor tell units apart
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _spec(model, residual=True):
    sd = model.state_dict()
    config = model.config.to_dict()
    return infer_spec({k: tuple(v.shape) for k, v in sd.items()}, config, infer_structure(sd, config), residual)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("residual", [True, False])
def test_a_permuted_model_computes_the_same_function(family, residual):
    model = _model(family, 0)
    spec = _spec(model, residual)
    gen = torch.Generator().manual_seed(1)
    perms = {g: torch.randperm(n, generator=gen) for g, n in spec.sizes.items()}
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    permuted = {k: permute(v, spec.axes.get(k, ()), perms) for k, v in model.state_dict().items()}
    assert any(not torch.equal(permuted[k], v) for k, v in model.state_dict().items())
    twin = _model(family, 5)
    twin.load_state_dict(permuted)
    ids = torch.randint(3, 64, (2, 12), generator=gen)
    torch.testing.assert_close(_logits(twin, ids), _logits(model, ids), rtol=0, atol=1e-5)


def test_weight_matching_recovers_a_hidden_permutation():
    model = _model("llama", 0)
    spec = _spec(model)
    gen = torch.Generator().manual_seed(2)
    perms = {g: torch.randperm(n, generator=gen) for g, n in spec.sizes.items()}
    sd = model.state_dict()
    shuffled = {k: permute(v, spec.axes.get(k, ()), perms) for k, v in sd.items()}
    found, _ = weight_matching(spec, sd.__getitem__, shuffled.__getitem__)
    for k, v in sd.items():
        assert torch.equal(permute(shuffled[k], spec.axes.get(k, ()), found), v), k


def _save(model, path: Path) -> Path:
    model.save_pretrained(path)
    return path


def _recipe(tmp_path: Path, doc: dict, name="r.yaml"):
    return parse_recipe(yaml.safe_dump(doc), tmp_path)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_the_merge_applies_and_records_the_alignment(tmp_path, family):
    a, b = _model(family, 0), _model(family, 1)
    _save(a, tmp_path / "a"), _save(b, tmp_path / "b")
    doc = {"merge_method": "linear", "align": "weight_matching", "align_residual": True, "dtype": "float32",
           "models": [{"model": "a", "parameters": {"weight": 0.0}}, {"model": "b", "parameters": {"weight": 1.0}}]}
    result = run_merge(_recipe(tmp_path, doc), tmp_path / "out", progress=False)
    # weight 0 on the reference: the output is b with its units in a's order, the same function as b
    out = getattr(transformers, FAMILIES[family][1]).from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(3, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_logits(out, ids), _logits(b, ids), rtol=0, atol=1e-5)
    record = json.loads((tmp_path / "out" / ALIGNMENT_NAME).read_text())
    assert record["reference"] == "a" and record["residual"] is True
    assert result.manifest["alignment"]["parents"]["b"]["units_moved"] > 0
    assert ALIGNMENT_NAME in {f["path"] for f in result.manifest["files"]}
    # the recorded permutations are the ones applied
    spec = _spec(a, residual=True)
    perms = {g: torch.tensor(p) for g, p in record["parents"]["b"]["permutations"].items()}
    for k, v in b.state_dict().items():
        assert torch.equal(out.state_dict()[k], permute(v, spec.axes.get(k, ()), perms)), k
    # replayed, the same bytes
    again = run_merge(_recipe(tmp_path, doc), tmp_path / "again", progress=False)
    assert again.content_id == result.content_id


def test_what_cannot_be_aligned_is_refused_in_one_line(tmp_path):
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2))
    _save(gpt2, tmp_path / "a"), _save(gpt2, tmp_path / "b")
    doc = {"merge_method": "linear", "align": "weight_matching",
           "models": [{"model": "a", "parameters": {"weight": 0.5}}, {"model": "b", "parameters": {"weight": 0.5}}]}
    cli_doc = {**doc, "models": [{"model": str(tmp_path / m), "parameters": {"weight": 0.5}} for m in "ab"]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(cli_doc))
    res = CliRunner().invoke(cli, ["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert line.startswith("error:") and "\n" not in line and "GPT2LMHeadModel: align: weight_matching" in line
    assert not (tmp_path / "out").exists()
    phi = transformers.Phi3ForCausalLM(transformers.Phi3Config(**DEC))
    _save(phi, tmp_path / "p1"), _save(phi, tmp_path / "p2")
    with pytest.raises(CompatibilityError, match="Phi3ForCausalLM: align: weight_matching: cannot tell how .*_proj"):
        run_merge(_recipe(tmp_path, {**doc, "models": [{"model": m, "parameters": {"weight": 1.0}} for m in ("p1", "p2")]}),
                  tmp_path / "o2", progress=False)
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("doc, message", [
    ({"align": "weight_match"}, "align"),
    ({"align": "weight_matching", "models": None,
      "slices": [{"sources": [{"model": "a", "layer_range": [0, 1]}]}]}, "needs a 'models:' recipe"),
    ({"align": "weight_matching", "models": [{"model": "a", "parameters": {"weight": 1.0}}]}, "at least two models"),
])
def test_align_keys_are_validated(tmp_path, doc, message):
    base = {"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": 0.5}},
                                                 {"model": "b", "parameters": {"weight": 0.5}}]}
    with pytest.raises(RecipeError, match=message):
        parse_recipe(yaml.safe_dump({k: v for k, v in {**base, **doc}.items() if v is not None}), tmp_path)


@pytest.mark.heavy
def test_aligning_a_pair_trained_from_different_seeds_lowers_the_barrier(tmp_path):
    """Git Re-Basin's claim on the zoo's seed pair: averaging after alignment loses less than
    averaging unaligned. Measured with `pytest -s` (losses in nats per target token, eval split):
    seed-1 reverse 0.631 / sort 0.128, seed-2 0.664 / 0.101, naive average 2.923 / 2.383, aligned
    (heads and MLP units) 2.803 / 2.203; aligning the residual stream as well gave 3.261 / 2.338."""
    from evaluation.zoo.seed_pair import build_seed_pair, domain_loss, pair_records

    a, b = build_seed_pair(tmp_path / "pair")
    _, evals = pair_records(0)

    def losses(path: Path) -> dict[str, float]:
        model = transformers.LlamaForCausalLM.from_pretrained(path).eval()
        return {d: domain_loss(model, records) for d, records in evals.items()}

    outs = {}
    for label, extra in (("naive", {}), ("aligned", {"align": "weight_matching"})):
        doc = {"merge_method": "linear", "dtype": "float32", **extra,
               "models": [{"model": str(a), "parameters": {"weight": 0.5}}, {"model": str(b), "parameters": {"weight": 0.5}}]}
        run_merge(_recipe(tmp_path, doc), tmp_path / label, progress=False)
        outs[label] = losses(tmp_path / label)
    ends = [losses(a), losses(b)]
    barrier = {label: {d: v - (ends[0][d] + ends[1][d]) / 2 for d, v in mid.items()} for label, mid in outs.items()}
    print("\nseed pair losses:", {"seed-1": ends[0], "seed-2": ends[1], **outs}, "barriers:", barrier)
    for d in evals:
        assert max(ends[0][d], ends[1][d]) < outs["naive"][d]  # unaligned, the average is far worse than either
        assert outs["aligned"][d] < outs["naive"][d], d
    assert sum(barrier["aligned"].values()) < sum(barrier["naive"].values())
