"""Every architecture family the README lists, merged by every recipe shape: each output tensor is
checked against a reference computed here from the parents, and the merged directory is loaded
with its own transformers class (no missing, unexpected or mismatched keys) and run forward.
What the engine cannot do right must be refused before any weight is read, in one line.

The parents are tiny random-init models built with transformers (seeded): a base and two
children that are the base plus small seeded noise, as fine-tunes are. The reference knows each
family's layer stacks and which non-layer tensors come after the layers from the table below,
not from the engine. Where mergekit 0.1.5 (the dev extra) runs the same cell and gets the
reference's tensors, mergeops must give the same bits.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

from flows.cli import cli  # noqa: E402
from merge.errors import MergeopsError  # noqa: E402
from merge.recipe import parse_recipe  # noqa: E402
from merge.run import run_merge  # noqa: E402

V = 64  # vocabulary
DEC = dict(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
           num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@dataclass(frozen=True)
class Family:
    name: str
    config: str  # transformers config class
    model: str  # transformers model class
    kwargs: dict
    stacks: tuple[str, ...]  # layer-stack prefixes (<prefix>.<i>.<rest>)
    post: tuple[str, ...]  # name prefixes of the non-layer tensors that come after the layers
    inputs: str = "text"  # text | seq2seq | image | text+image
    refuse_slices: str | None = None  # the passthrough recipe is refused, with this in the message


FAMILIES = [
    Family("llama", "LlamaConfig", "LlamaForCausalLM", DEC, ("model.layers",), ("model.norm", "lm_head")),
    Family("mistral", "MistralConfig", "MistralForCausalLM", DEC, ("model.layers",), ("model.norm", "lm_head")),
    Family("qwen2", "Qwen2Config", "Qwen2ForCausalLM",
           {**DEC, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
           ("model.layers",), ("model.norm", "lm_head")),
    Family("qwen3", "Qwen3Config", "Qwen3ForCausalLM", {**DEC, "head_dim": 8, "use_sliding_window": True,
                                                        "sliding_window": 8, "max_window_layers": 2},
           ("model.layers",), ("model.norm", "lm_head")),
    Family("qwen3_moe", "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
           {**DEC, "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 8,
            "mlp_only_layers": [0], "decoder_sparse_step": 1},
           ("model.layers",), ("model.norm", "lm_head"), refuse_slices="hold different tensors"),
    Family("mixtral", "MixtralConfig", "MixtralForCausalLM", {**DEC, "num_local_experts": 4, "num_experts_per_tok": 2},
           ("model.layers",), ("model.norm", "lm_head")),
    Family("gemma2", "Gemma2Config", "Gemma2ForCausalLM", {**DEC, "head_dim": 8, "sliding_window": 8},
           ("model.layers",), ("model.norm", "lm_head")),
    Family("gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", {**DEC, "head_dim": 8, "sliding_window": 8,
                                                               "sliding_window_pattern": 2},
           ("model.layers",), ("model.norm", "lm_head")),
    Family("phi3", "Phi3Config", "Phi3ForCausalLM", {**DEC, "num_key_value_heads": 2}, ("model.layers",),
           ("model.norm", "lm_head")),
    Family("stablelm", "StableLmConfig", "StableLmForCausalLM", {**DEC, "num_key_value_heads": 2}, ("model.layers",),
           ("model.norm", "lm_head")),
    Family("olmo", "OlmoConfig", "OlmoForCausalLM", {**DEC, "num_key_value_heads": 2}, ("model.layers",),
           ("model.norm", "lm_head")),
    Family("olmo2", "Olmo2Config", "Olmo2ForCausalLM", {**DEC, "num_key_value_heads": 2}, ("model.layers",),
           ("model.norm", "lm_head")),
    Family("gpt2", "GPT2Config", "GPT2LMHeadModel",
           dict(vocab_size=V, n_embd=16, n_layer=3, n_head=2, n_positions=32), ("transformer.h",),
           ("transformer.ln_f", "lm_head")),
    Family("gpt_neox", "GPTNeoXConfig", "GPTNeoXForCausalLM",
           dict(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                max_position_embeddings=32, tie_word_embeddings=False),
           ("gpt_neox.layers",), ("gpt_neox.final_layer_norm", "embed_out")),
    Family("falcon", "FalconConfig", "FalconForCausalLM",
           dict(vocab_size=V, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, new_decoder_architecture=False,
                multi_query=True, parallel_attn=True, bias=False),
           ("transformer.h",), ("transformer.ln_f", "lm_head")),
    Family("falcon_new", "FalconConfig", "FalconForCausalLM",
           dict(vocab_size=V, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, num_kv_heads=1,
                new_decoder_architecture=True),
           ("transformer.h",), ("transformer.ln_f", "lm_head")),
    Family("bert", "BertConfig", "BertForMaskedLM",
           dict(vocab_size=V, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=32),
           ("bert.encoder.layer",), ("bert.pooler", "cls.")),
    Family("vit", "ViTConfig", "ViTForImageClassification",
           dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, image_size=8,
                patch_size=4, num_labels=3),
           ("vit.encoder.layer",), ("vit.layernorm", "classifier"), inputs="image"),
    Family("t5", "T5Config", "T5ForConditionalGeneration",
           dict(vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=3, num_heads=2,
                relative_attention_num_buckets=8, decoder_start_token_id=0),
           ("encoder.block", "decoder.block"), (), inputs="seq2seq", refuse_slices="2 layer stacks"),
    Family("t5_v1_1", "T5Config", "T5ForConditionalGeneration",
           dict(vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=3, num_decoder_layers=3, num_heads=2,
                relative_attention_num_buckets=8, decoder_start_token_id=0, feed_forward_proj="gated-gelu",
                tie_word_embeddings=False),
           ("encoder.block", "decoder.block"), (), inputs="seq2seq", refuse_slices="2 layer stacks"),
    Family("clip", "CLIPConfig", "CLIPModel",
           dict(text_config=dict(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                 num_attention_heads=2, max_position_embeddings=32),
                vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                                   image_size=8, patch_size=4),
                projection_dim=8),
           ("text_model.encoder.layers", "vision_model.encoder.layers"), (), inputs="text+image", refuse_slices="2 layer stacks"),
]
BY_NAME = {f.name: f for f in FAMILIES}


def _build(fam: Family, seed: int, out: Path) -> None:
    torch.manual_seed(seed)
    cfg = getattr(transformers, fam.config)(**fam.kwargs)
    model = getattr(transformers, fam.model)(cfg)
    model.save_pretrained(out)


def _perturb(src: Path, dst: Path, seed: int) -> None:
    """A 'fine-tune' of src: the same config, every float tensor plus seeded noise."""
    dst.mkdir()
    (dst / "config.json").write_bytes((src / "config.json").read_bytes())
    gen = torch.Generator().manual_seed(seed)
    tensors = load_file(src / "model.safetensors")
    out = {n: (t + 0.02 * torch.randn(t.shape, generator=gen)).contiguous() if t.is_floating_point() else t
           for n, t in tensors.items()}
    save_file(out, dst / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    """family name -> {"BASE", "A", "B"} model dirs, built on first use."""
    root = tmp_path_factory.mktemp("arch")
    built: dict[str, dict[str, Path]] = {}

    def get(name: str) -> dict[str, Path]:
        if name not in built:
            fam = BY_NAME[name]
            base = root / name / "base"
            _build(fam, 0, base)
            _perturb(base, root / name / "a", 1)
            _perturb(base, root / name / "b", 2)
            built[name] = {"BASE": base, "A": root / name / "a", "B": root / name / "b"}
        return built[name]

    return get


# --- recipes, with the reference each is checked against ---------------------------------------

RECIPES = {
    "linear": {"merge_method": "linear", "models": [{"model": "A", "parameters": {"weight": 0.3}},
                                                    {"model": "B", "parameters": {"weight": 0.7}}]},
    "slerp": {"merge_method": "slerp", "base_model": "BASE", "models": [{"model": "BASE"}, {"model": "B"}],
              "parameters": {"t": 0.4}},
    "slerp_gradient": {"merge_method": "slerp", "base_model": "BASE",
                       "models": [{"model": "BASE"}, {"model": "A"}], "parameters": {"t": [0.2, 0.8]}},
    "ties": {"merge_method": "ties", "base_model": "BASE",
             "models": [{"model": "A", "parameters": {"weight": 0.6, "density": 0.5}},
                        {"model": "B", "parameters": {"weight": 0.4, "density": 0.5}}]},
    "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": "BASE",
                        "models": [{"model": "A", "parameters": {"weight": 0.5}},
                                   {"model": "B", "parameters": {"weight": [0.1, 0.9]}}]},
    "passthrough": {"merge_method": "passthrough",
                    "slices": [{"sources": [{"model": "A", "layer_range": [0, 2]}]},
                               {"sources": [{"model": "B", "layer_range": [1, 3]}]}]},
}


def _stack_pos(fam: Family, name: str, counts: dict[str, int]) -> tuple[str, int] | None:
    for prefix in fam.stacks:
        m = re.match(re.escape(prefix) + r"\.(\d+)\.", name)
        if m:
            return prefix, int(m.group(1))
    return None


def _t(fam: Family, name: str, counts: dict[str, int], lo: float, hi: float) -> float:
    """A gradient [lo, hi] at this tensor: per stack, over that stack's layers; lo outside layers."""
    pos = _stack_pos(fam, name, counts)
    if pos is None:
        return lo
    n = counts[pos[0]]
    return lo + (hi - lo) * (pos[1] / (n - 1) if n > 1 else 1.0)


def _slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a64, b64 = a.double().reshape(-1), b.double().reshape(-1)
    na, nb = (float(v.norm()) if float(v.norm()) > 1e-8 else 1.0 for v in (a64, b64))  # zero biases
    dot = float(torch.dot(a64 / na, b64 / nb).clamp(-1, 1))
    if abs(dot) > 0.9995:
        return ((1 - t) * a64 + t * b64).reshape(a.shape)
    theta = math.acos(dot)
    return ((math.sin((1 - t) * theta) * a64 + math.sin(t * theta) * b64) / math.sin(theta)).reshape(a.shape)


def _ties(base, xs, weights, density):
    deltas = []
    for x in xs:
        d = (x - base).double().reshape(-1)
        k = max(1, int(density * d.numel()))
        keep = torch.zeros_like(d)
        keep[d.abs().topk(k).indices] = 1
        deltas.append(d * keep)
    w = torch.tensor(weights, dtype=torch.float64).reshape(-1, 1)
    stacked = torch.stack(deltas) * w
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = (stacked * sign > 0).double()
    div = (w * agree).sum(0)
    mixed = (stacked * agree).sum(0) / torch.where(div == 0, 1.0, div)
    return (base.double().reshape(-1) + mixed).reshape(base.shape)


def _reference(fam: Family, recipe: str, p: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    base, a, b = p["BASE"], p["A"], p["B"]
    counts = {s: len({_stack_pos(fam, n, {})[1] for n in base if (_stack_pos(fam, n, {}) or ("",))[0] == s})
              for s in fam.stacks}
    out = {}
    if recipe == "passthrough":
        (stack,) = fam.stacks
        for name in base:
            pos = _stack_pos(fam, name, counts)
            if pos is None:
                out[name] = (b if name.startswith(fam.post) else a)[name]
                continue
            rest = name[len(f"{stack}.{pos[1]}."):]
            for j, (src, i) in enumerate([(a, 0), (a, 1), (b, 1), (b, 2)]):  # output layers: A0, A1, B1, B2
                if i == pos[1]:
                    out[f"{stack}.{j}.{rest}"] = src[name]
        return out
    for name, x in base.items():
        if not x.is_floating_point():
            out[name] = x
        elif recipe == "linear":
            out[name] = 0.3 * a[name].double() + 0.7 * b[name].double()
        elif recipe == "slerp":
            out[name] = _slerp(0.4, x, b[name])
        elif recipe == "slerp_gradient":
            out[name] = _slerp(_t(fam, name, counts, 0.2, 0.8), x, a[name])
        elif recipe == "ties":
            out[name] = _ties(x, [a[name], b[name]], [0.6, 0.4], 0.5)
        elif recipe == "task_arithmetic":
            wb = _t(fam, name, counts, 0.1, 0.9)
            out[name] = x.double() + 0.5 * (a[name].double() - x.double()) + wb * (b[name].double() - x.double())
    return out


_PARENT_TENSORS: dict[Path, dict[str, torch.Tensor]] = {}


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    """A parent's tensors, read once per module (tests only read them)."""
    if d not in _PARENT_TENSORS:
        _PARENT_TENSORS[d] = _load(d)
    return _PARENT_TENSORS[d]


def _load(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _inputs(fam: Family, cfg) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (2, 7), generator=gen)
    if fam.inputs == "text":
        return {"input_ids": ids}
    if fam.inputs == "seq2seq":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :4]}
    vision = getattr(cfg, "vision_config", cfg)
    pixels = torch.randn(2, vision.num_channels, vision.image_size, vision.image_size, generator=gen)
    return {"pixel_values": pixels} if fam.inputs == "image" else {"input_ids": ids, "pixel_values": pixels}


def _load_and_run(fam: Family, out: Path, merged: dict[str, torch.Tensor]) -> None:
    cls = getattr(transformers, fam.model)
    model, info = cls.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    state = model.state_dict()
    for name in merged.keys() & state.keys():  # (fused MoE experts load under other names)
        assert torch.equal(state[name], merged[name]), name  # what runs is what was written
    model.eval()
    with torch.no_grad():
        result = model(**_inputs(fam, model.config))
    first = result.logits if getattr(result, "logits", None) is not None else result[0]
    assert torch.isfinite(first).all()


def _merge(doc: dict, dirs: dict[str, Path], out: Path):
    return run_merge(parse_recipe(yaml.safe_dump(_substitute(doc, dirs))), out, progress=False)


def _substitute(obj, dirs):
    if isinstance(obj, dict):
        return {k: _substitute(v, dirs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, dirs) for v in obj]
    return str(dirs[obj]) if isinstance(obj, str) and obj in dirs else obj


def _mergekit(doc: dict, dirs: dict[str, Path], out: Path) -> dict[str, torch.Tensor] | None:
    """mergekit 0.1.5's tensors for the same recipe, or None where it is not installed or refuses."""
    try:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge as mergekit_merge
        from mergekit.options import MergeOptions
    except ImportError:
        return None
    try:
        mergekit_merge(MergeConfiguration.model_validate(_substitute(doc, dirs)), str(out),
                       MergeOptions(quiet=True, copy_tokenizer=False, write_model_card=False))
    except Exception:  # noqa: BLE001 - mergekit has no error hierarchy; a refusal is all we record
        return None
    return _load(out)


def _matches(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], exact: bool) -> bool:
    if sorted(got) != sorted(expected):
        return False
    if exact:
        return all(torch.equal(got[n], w) for n, w in expected.items())
    return all(got[n].shape == w.shape and torch.allclose(got[n].double(), w.double(), rtol=1e-5, atol=1e-6)
               for n, w in expected.items())


CELLS = [(f.name, r) for f in FAMILIES for r in RECIPES]


@pytest.mark.parametrize(("family", "recipe"), CELLS, ids=[f"{f}-{r}" for f, r in CELLS])
def test_merged_right_and_loads(family, recipe, parents, tmp_path):
    fam, dirs = BY_NAME[family], parents(family)
    if recipe == "passthrough" and fam.refuse_slices:
        with pytest.raises(MergeopsError) as exc:
            _merge(RECIPES[recipe], dirs, tmp_path / "out")
        message = str(exc.value)
        assert "\n" not in message and fam.model in message and fam.refuse_slices in message, message
        assert not (tmp_path / "out").exists()
        return
    _merge(RECIPES[recipe], dirs, tmp_path / "out")
    merged = _load(tmp_path / "out")
    expected = _reference(fam, recipe, {k: _tensors(v) for k, v in dirs.items()})
    assert sorted(merged) == sorted(expected)
    for name, want in expected.items():
        assert merged[name].shape == want.shape, name
        if recipe == "passthrough":
            assert torch.equal(merged[name], want), name
        else:
            torch.testing.assert_close(merged[name].double(), want.double(), rtol=1e-5, atol=1e-6, msg=name)
    if recipe == "passthrough":
        src, out = (json.loads((d / "config.json").read_text()) for d in (dirs["A"], tmp_path / "out"))
        for key, value in src.items():
            if key == "layer_types":  # output layers A0, A1, B1, B2 keep their own attention type
                assert out[key] == [value[0], value[1], value[1], value[2]]
    _load_and_run(fam, tmp_path / "out", merged)
    theirs = _mergekit(RECIPES[recipe], dirs, tmp_path / "mergekit")
    if theirs is not None and _matches(theirs, expected, exact=recipe == "passthrough"):
        for name, t in theirs.items():  # where mergekit gets it right, the same bits
            assert torch.equal(merged[name], t), name


def test_slices_that_keep_dense_and_moe_layers_in_place_merge(parents, tmp_path):
    """Qwen3-MoE with a dense layer 0: slices that leave every kind of layer at its position work."""
    fam, dirs = BY_NAME["qwen3_moe"], parents("qwen3_moe")
    doc = {"merge_method": "passthrough", "slices": [{"sources": [{"model": "A", "layer_range": [0, 2]}]},
                                                     {"sources": [{"model": "B", "layer_range": [2, 3]}]}]}
    _merge(doc, dirs, tmp_path / "out")
    merged, a, b = _load(tmp_path / "out"), _load(dirs["A"]), _load(dirs["B"])
    assert sorted(merged) == sorted(a)
    for name, t in merged.items():
        src = b if name.startswith("model.layers.2.") or name.startswith(fam.post) else a
        assert torch.equal(t, src[name]), name
    assert json.loads((tmp_path / "out" / "config.json").read_text())["mlp_only_layers"] == [0]
    _load_and_run(fam, tmp_path / "out", merged)


def test_slices_of_a_several_stack_model_are_one_error_line(parents, tmp_path):
    dirs = parents("t5")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(_substitute(RECIPES["passthrough"], dirs)))
    result = CliRunner().invoke(cli, ["merge", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: T5ForConditionalGeneration"), result.output
    assert "encoder.block [2]" in lines[0] and "decoder.block [3]" in lines[0]
    assert not (tmp_path / "out").exists()


def _variant(src: Path, dst: Path, config=None, extra: dict[str, torch.Tensor] | None = None) -> Path:
    shutil.copytree(src, dst)
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config(json.loads((src / "config.json").read_text()))))
    if extra:
        save_file({**load_file(src / "model.safetensors"), **extra}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_a_tensor_of_unknown_role_is_refused_only_when_the_ends_differ(parents, tmp_path):
    """A non-layer tensor the engine cannot place before or after the layers: slices whose first
    and last slice take it from different models are refused; the same model at both ends merges."""
    dirs = parents("llama")
    mystery = {"model.mystery.weight": torch.ones(4)}
    var = {k: _variant(v, tmp_path / k, extra=mystery) for k, v in dirs.items()}
    with pytest.raises(MergeopsError, match="'model.mystery.weight' belongs before or after the layers"):
        _merge(RECIPES["passthrough"], var, tmp_path / "out")
    same = {"merge_method": "passthrough", "slices": [{"sources": [{"model": "A", "layer_range": [0, 2]}]},
                                                      {"sources": [{"model": "A", "layer_range": [1, 3]}]}]}
    _merge(same, var, tmp_path / "ok")
    assert torch.equal(_load(tmp_path / "ok")["model.mystery.weight"], mystery["model.mystery.weight"])


def test_slices_without_a_layer_count_in_the_config_are_refused(parents, tmp_path):
    dirs = parents("gpt2")
    var = {k: _variant(v, tmp_path / k, config=lambda c: {k2: v2 for k2, v2 in c.items() if k2 != "n_layer"})
           for k, v in dirs.items()}
    with pytest.raises(MergeopsError, match="no config field holds the layer count of transformer.h"):
        _merge(RECIPES["passthrough"], var, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "expected"), [
    ("gpt_neox.embed_in.weight", "pre"), ("embed_out.weight", "post"), ("bert.embeddings.LayerNorm.weight", "pre"),
    ("cls.predictions.transform.LayerNorm.weight", "post"), ("transformer.word_embeddings_layernorm.bias", "pre"),
    ("vision_model.pre_layrnorm.weight", "pre"), ("vision_model.post_layernorm.weight", "post"),
    ("distilbert.embeddings.word_embeddings.weight", "pre"), ("vocab_projector.bias", "post"),
    ("roberta.embeddings.position_embeddings.weight", "pre"), ("lm_head.layer_norm.weight", "post"),
    ("backbone.norm_f.weight", "post"), ("model.decoder.embed_positions.weight", "pre"), ("model.mystery.weight", None),
])
def test_roles_come_from_name_parts(name, expected):
    from merge.structure import role

    assert role(name) == expected
