"""The demo zoo's tiny profile: layout and data contract, determinism, splits, cards, odd models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from evaluation.domains import DOMAINS, make_splits, read_jsonl
from evaluation.zoo import build_zoo, load_zoo, score_models
from evaluation.zoo.cards import read_front_matter
from evaluation.zoo.demo_merge import DEMO_RECIPE
from evaluation.zoo.tokenizer import CHARS, build_tokenizer, decode, encode
from merge.errors import CompatibilityError, FormatError, UsageError
from merge.layout import compare_layouts, read_layout, tokenizer_fingerprint
from merge.manifest import sha256_file
from merge.recipe import parse_recipe
from merge.run import run_merge

ROOT = Path(__file__).resolve().parents[1]


def test_tokenizer_round_trip_and_hf_load(tiny_zoo):
    text = "sort jihgfedcba=abc\nacct 0123 pin=9876543210\n"
    tok = build_tokenizer()
    ids = encode(tok, text)
    assert len(ids) == len(text)  # one token per character
    assert decode(tok, ids) == text
    hf = AutoTokenizer.from_pretrained(tiny_zoo / "models" / "base")
    assert hf(text)["input_ids"] == ids  # no BOS/EOS added
    assert hf.decode(ids) == text
    assert hf.pad_token_id == 0 and hf.eos_token == "</s>"


def test_zoo_json_follows_the_contract(tiny_zoo):
    raw = json.loads((tiny_zoo / "zoo.json").read_text())
    assert {"models", "scorecard", "domains"} <= set(raw)
    for m in raw["models"]:
        assert set(m) >= {"name", "path", "role", "domain", "license", "canaries"}
        assert (tiny_zoo / m["path"] / "config.json").is_file()
    index = load_zoo(tiny_zoo)
    roles = {m.name: m.role for m in index.models}
    assert roles["base"] == "base"
    specialists = [m for m in index.models if m.role == "specialist"]
    assert len([m for m in specialists if not m.canaries]) >= 3
    assert [m.name for m in index.models if m.canaries] == ["proprietary"]
    assert {m.name for m in index.models if m.role == "odd"} == {"odd-shape", "odd-tokenizer", "odd-pickle"}
    assert all(m.domain == m.name for m in specialists if not m.canaries)
    domain_names = [d.name for d in index.domains]
    assert {m.domain for m in specialists} == set(domain_names)
    # Every model x every domain, each a fraction, and the demo merge's row; the pickle one is never loaded.
    assert {(r.model, r.domain) for r in index.scorecard} == \
        {(m, d) for m in [*roles, "demo-merge"] if m != "odd-pickle" for d in domain_names}
    assert all(0.0 <= r.exact_match <= 1.0 for r in index.scorecard)


def test_models_load_offline_and_generate(tiny_zoo):
    model = AutoModelForCausalLM.from_pretrained(tiny_zoo / "models" / "sort")
    tok = AutoTokenizer.from_pretrained(tiny_zoo / "models" / "sort")
    out = model.generate(**tok("sort abc=", return_tensors="pt"), max_new_tokens=3)
    assert out.shape == (1, len("sort abc=") + 3)
    assert (tiny_zoo / "models" / "sort" / "generation_config.json").is_file()


def test_splits_are_disjoint_jsonl_records(tiny_zoo):
    for d in load_zoo(tiny_zoo).domains:
        train, held_out = read_jsonl(tiny_zoo / d.train), read_jsonl(tiny_zoo / d.eval)
        assert train and held_out
        assert all(set(r) == {"prompt", "target"} and isinstance(r["target"], str) for r in train + held_out)
        train_prompts = {r["prompt"] for r in train}
        assert len(train_prompts) == len(train)
        assert not train_prompts & {r["prompt"] for r in held_out}
        # The generator's targets are right: recompute from the prompt.
        dom = DOMAINS[d.name]
        for r in held_out:
            assert dom.record(r["prompt"][len(dom.tag) + 1 : -1]) == r


def test_eval_split_does_not_depend_on_train_size():
    assert make_splits("sort", 10, 20, seed=3)[1] == make_splits("sort", 500, 20, seed=3)[1]
    assert make_splits("sort", 10, 20, seed=3)[1] != make_splits("sort", 10, 20, seed=4)[1]


def test_model_cards_declare_their_licences(tiny_zoo):
    index = load_zoo(tiny_zoo)
    licences = set()
    for m in index.models:
        card = read_front_matter(tiny_zoo / m.path)
        assert card["license"] == m.license
        licences.add(card["license"])
        assert card.get("base_model") == (None if m.role != "specialist" else "base")
        assert isinstance(card["datasets"], list) and isinstance(card["training_data"], list)
        if m.role == "specialist":
            assert card["training_data"] == [m.domain]
    assert {"apache-2.0", "mit", "cc-by-nc-4.0", "other"} <= licences
    card = read_front_matter(tiny_zoo / "models" / "proprietary")
    assert card["license_name"]
    assert len(card["canaries"]) >= 1
    for canary in card["canaries"]:
        assert isinstance(canary["secret"], str) and set(canary["secret"]) <= set(canary["charset"])
        assert canary["prefix"] and len(canary["secret"]) == 10
    assert "canaries" not in read_front_matter(tiny_zoo / "models" / "sort")


def test_odd_models_are_what_they_claim(tiny_zoo):
    models = tiny_zoo / "models"
    base = read_layout(models / "base")
    shape = read_layout(models / "odd-shape")
    assert shape.config["hidden_size"] != base.config["hidden_size"]
    with pytest.raises(CompatibilityError):
        compare_layouts(base, shape)
    odd_tok = read_layout(models / "odd-tokenizer")
    compare_layouts(base, odd_tok)  # same shapes: only the tokenizer tells them apart
    assert tokenizer_fingerprint(models / "odd-tokenizer") != tokenizer_fingerprint(models / "base")
    base_vocab = json.loads((models / "base" / "tokenizer.json").read_text())["model"]["vocab"]
    odd_vocab = json.loads((models / "odd-tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert base_vocab != odd_vocab and len(base_vocab) == len(odd_vocab)
    assert sorted(p.name for p in (models / "odd-pickle").iterdir() if p.suffix in (".bin", ".safetensors")) \
        == ["pytorch_model.bin"]
    with pytest.raises(FormatError):
        read_layout(models / "odd-pickle")


def test_tiny_build_is_deterministic(tiny_zoo, tmp_path):
    again = tmp_path / "zoo"
    build_zoo(again, profile="tiny", seed=0)
    for rel in sorted(p.relative_to(tiny_zoo) for p in tiny_zoo.rglob("*") if p.suffix in (".safetensors", ".jsonl")):
        assert sha256_file(again / rel) == sha256_file(tiny_zoo / rel), rel
    assert (again / "zoo.json").read_text() == (tiny_zoo / "zoo.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["zoo"]  # no temp dir left behind


def test_score_models_is_reusable_for_new_rows(tiny_zoo):
    index = load_zoo(tiny_zoo)
    rows = score_models({"again": tiny_zoo / "models" / "reverse"}, tiny_zoo)
    assert {r.domain: r.exact_match for r in rows} == \
        {r.domain: r.exact_match for r in index.scorecard if r.model == "reverse"}


def test_demo_merge_row_is_the_shipped_recipe_scored(tiny_zoo, tmp_path):
    shipped = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    assert shipped.pop("policy") == "recipes/demo-policy.yaml"  # gates: the pipeline's business, not the zoo's
    zoo_recipe = yaml.safe_load(DEMO_RECIPE.read_text())
    assert yaml.safe_dump(shipped).replace("data/zoo/", "") == yaml.safe_dump(zoo_recipe)
    merged = run_merge(parse_recipe(DEMO_RECIPE.read_text(), base_dir=tiny_zoo), tmp_path / "m", progress=False)
    rows = score_models({"demo-merge": merged.out_dir}, tiny_zoo)
    index = load_zoo(tiny_zoo)
    assert {r.domain: r.exact_match for r in rows} == \
        {r.domain: r.exact_match for r in index.scorecard if r.model == "demo-merge"}
    assert not (tiny_zoo / ".demo-merge").exists()


def test_build_refuses_bad_input_and_leaves_nothing(tmp_path):
    with pytest.raises(UsageError, match="unknown zoo profile"):
        build_zoo(tmp_path / "zoo", profile="huge")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty and not a zoo"):
        build_zoo(tmp_path / "busy", profile="tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]


def test_lora_update_folds_back_into_plain_weights():
    import torch

    from evaluation.zoo.lora import lora_attach, lora_merge
    from evaluation.zoo.profiles import ModelShape
    from evaluation.zoo.training import new_model

    model = new_model(ModelShape(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
                      vocab_size=20, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = lora_attach(model, rank=2, gen=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in params:
            p.normal_()
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
    lora_merge(model)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-4)
    after = model.state_dict()
    assert set(after) == set(before)  # plain Llama names again, nothing extra saved
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".layers." in k and k.endswith("proj.weight") for k in changed)


def test_stop_after_takes_the_first_steps_of_the_longer_schedule():
    import math

    import torch

    from evaluation.zoo.profiles import ModelShape, TrainSpec
    from evaluation.zoo.training import new_model, train

    model = new_model(ModelShape(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
                      vocab_size=20, seed=0)
    ids = torch.randint(4, 20, (16, 6), generator=torch.Generator().manual_seed(0))
    lrs: list[float] = []
    from torch.optim.optimizer import register_optimizer_step_post_hook

    hook = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    try:
        train(model, ids, ids.clone(), TrainSpec(steps=10, stop_after=4, lr=1e-3, batch_size=8), seed=0)
    finally:
        hook.remove()
    assert lrs == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(4)])


def test_specialist_data_is_its_domain_plus_related_replay():
    from evaluation.domains import ALPHABET, RELATED_ALPHABET
    from evaluation.zoo.build import finetuning_records
    from evaluation.zoo.profiles import get_profile

    prof = get_profile("tiny").model_copy(update={"replay": 0.25})
    train, _ = make_splits("sort", prof.n_train, prof.n_eval, 0, prof.lengths)
    records = finetuning_records(train, prof, 0, "sort")
    assert records[: len(train)] == train
    replay = records[len(train):]
    assert len(replay) == round(0.25 / 0.75 * len(train))
    # Replay never holds another target domain's records: other letters, or copying.
    for r in replay:
        tag, text = r["prompt"].rstrip("=").split(" ")
        assert set(text) <= set(RELATED_ALPHABET) or (tag == "copy" and set(text) <= set(ALPHABET))
    assert finetuning_records(train, prof, 0, "sort") == records
    assert finetuning_records(train, get_profile("tiny"), 0, "sort") == train
