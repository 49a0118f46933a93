"""Sequential RegMean: statistics of each layer taken with the layers before it merged (mergeops
calibrate --kind sequential), solved by the regmean kernel from the files alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from evaluation.calibration import compute_statistics
from evaluation.sequential_calibration import compute_sequential
from flows.cli import cli
from merge.kernels import regmean
from merge.manifest import content_id
from merge.recipe import parse_recipe
from merge.run import run_merge


def test_the_kernel_fits_the_parents_outputs_from_the_merged_models_inputs():
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(5, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    xm = [torch.randn(40, 4, generator=g, dtype=torch.float64) for _ in range(2)]  # merged model's inputs
    xs = [x + 0.3 * torch.randn(40, 4, generator=g, dtype=torch.float64) for x in xm]  # each parent's own
    stats = [torch.stack([m.T @ m, m.T @ s]) / 40 for m, s in zip(xm, xs)]
    got = regmean(ws, stats, alpha=1.0, weights=[1.0, 1.0])
    want = torch.linalg.lstsq(torch.cat(xm), torch.cat([s @ w.T for s, w in zip(xs, ws)])).solution.T
    assert torch.allclose(got, want, atol=1e-10)
    plain = regmean(ws, [s[0] for s in stats], alpha=1.0)  # no drift (Xₘ = Xᵢ): plain RegMean
    assert not torch.allclose(got, plain, atol=1e-3)
    same = regmean(ws, [torch.stack([s[0], s[0]]) for s in stats], alpha=0.9)
    assert torch.allclose(same, regmean(ws, [s[0] for s in stats], alpha=0.9), atol=1e-10)


def _recipe(zoo: Path, tmp: Path, models=("reverse", "sort"), **parameters) -> Path:
    doc = {"merge_method": "regmean", "base_model": str(zoo / "models" / "base"),
           "models": [{"model": str(zoo / "models" / "base")}] + [
               {"model": str(zoo / "models" / m), "parameters": {"statistics": str(tmp / f"{m}.seq.safetensors")}}
               for m in models],
           "parameters": {"alpha": 1.0, **parameters}}
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _data(zoo: Path, models=("reverse", "sort")) -> list[Path]:
    return [zoo / "domains" / m / "train.jsonl" for m in models]


@pytest.mark.parametrize("parameters", [{}, {"lambda": 0.6, "alpha": 0.95}])
def test_merge_of_the_recipe_builds_the_model_calibrate_measured_bit_for_bit(tiny_zoo, tmp_path, parameters):
    zoo = Path(tiny_zoo)
    recipe = _recipe(zoo, tmp_path, **parameters)
    state = compute_sequential(parse_recipe(recipe.read_text()), _data(zoo), samples=6)
    merged = load_file(run_merge(parse_recipe(recipe.read_text()), tmp_path / "m", progress=False).out_dir
                       / "model.safetensors")
    assert set(merged) <= set(state)
    for name, tensor in merged.items():
        assert torch.equal(tensor, state[name]), name
    with safe_open(tmp_path / "sort.seq.safetensors", "pt") as f:
        meta = f.metadata()
        q = f.get_tensor("model.layers.1.self_attn.q_proj.weight")
    ids = [content_id(zoo / "models" / m) for m in ("reverse", "sort")]
    assert meta["mergeops.model_content_id"] == ids[1] and meta["mergeops.merged_with"] == ",".join(ids)
    assert meta["mergeops.statistics"] == "sequential" and meta["mergeops.samples"] == "6"
    assert q.dtype == torch.float64 and q.shape[0] == 2 and torch.allclose(q[0], q[0].T)
    # Another fit than plain RegMean's: the merged model's inputs are not the parent's own.
    plain = compute_statistics(zoo / "models" / "sort", _data(zoo)[1], kind="gram", out=tmp_path / "g.st", samples=6)
    assert not torch.allclose(q[1].float(), load_file(plain)["model.layers.1.self_attn.q_proj.weight"], atol=1e-3)


def test_the_cli_writes_each_models_statistics_and_a_merge_without_one_of_its_parents_refuses_them(tiny_zoo, tmp_path):
    zoo = Path(tiny_zoo)
    recipe = _recipe(zoo, tmp_path)
    args = ["calibrate", str(recipe), "--kind", "sequential", "--samples", "4"]
    done = CliRunner().invoke(cli, [*args, *sum((["--data", str(d)] for d in _data(zoo)), [])])
    assert done.exit_code == 0, done.output
    assert done.output.splitlines() == [f"wrote {tmp_path / f'{m}.seq.safetensors'}" for m in ("reverse", "sort")]
    other = tmp_path / "other.yaml"  # reverse's sequential statistics, merged with swap instead of sort
    gram = compute_statistics(zoo / "models" / "swap", _data(zoo, ["swap"])[0], kind="gram",
                              out=tmp_path / "swap.gram.safetensors", samples=4)
    doc = yaml.safe_load(recipe.read_text())
    doc["models"][2] = {"model": str(zoo / "models" / "swap"), "parameters": {"statistics": str(gram)}}
    other.write_text(yaml.safe_dump(doc))
    done = CliRunner().invoke(cli, ["merge", str(other), "--out", str(tmp_path / "out")])
    errors = [x for x in done.output.splitlines() if x.startswith("error:")]
    assert done.exit_code == 2 and len(errors) == 1 and "sequential statistics computed with parent content" in errors[0]
    assert not (tmp_path / "out").exists()


def test_calibrate_refuses_what_sequential_statistics_cannot_come_from(tiny_zoo, tmp_path):
    zoo = Path(tiny_zoo)
    recipe = _recipe(zoo, tmp_path)
    data = sum((["--data", str(d)] for d in _data(zoo)), [])
    fisher = tmp_path / "fisher.yaml"
    fisher.write_text(recipe.read_text().replace("merge_method: regmean", "merge_method: fisher")
                      .replace("parameters:\n  alpha: 1.0\n", ""))
    per_layer = tmp_path / "per-layer.yaml"
    per_layer.write_text(recipe.read_text().replace("alpha: 1.0", "alpha: [0.5, 1.0]"))
    cases = {
        "one --data per model": ["calibrate", str(recipe), "--kind", "sequential", "--data", str(_data(zoo)[0])],
        "drop --out": ["calibrate", str(recipe), "--kind", "sequential", *data, "--out", str(tmp_path / "x")],
        "not a model directory": ["calibrate", str(zoo / "models" / "sort"), "--kind", "sequential", *data],
        "merge_method: regmean": ["calibrate", str(fisher), "--kind", "sequential", *data],
        "one number for 'alpha'": ["calibrate", str(per_layer), "--kind", "sequential", *data],
        "one --data and --out": ["calibrate", str(zoo / "models" / "sort"), "--kind", "gram", *data,
                                 "--out", str(tmp_path / "g")],
    }
    for says, args in cases.items():
        done = CliRunner().invoke(cli, args)
        errors = [x for x in done.output.splitlines() if x.startswith("error:")]
        assert done.exit_code == 2 and len(errors) == 1 and says in errors[0], (says, done.output)
        assert "Traceback" not in done.output
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*tmp*"))


ARCHITECTURES = {  # small random decoders of other families, on the tiny zoo's tokenizer (47 tokens)
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),  # q, k, v with biases
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "sliding_window": 8}),  # tied output layer
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"num_key_value_heads": 2}),  # fused qkv and gate_up
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
}


@pytest.mark.parametrize("family", sorted(ARCHITECTURES))
def test_other_architectures_merge_to_the_model_calibrate_measured(family, tiny_zoo, tmp_path):
    import shutil

    import transformers

    zoo = Path(tiny_zoo)
    config, cls, extra = ARCHITECTURES[family]
    kwargs = dict(vocab_size=47, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    cfg = getattr(transformers, config)(**{**kwargs, **extra})
    for i, name in enumerate(("base", "reverse", "sort")):
        torch.manual_seed(i)
        getattr(transformers, cls)(cfg).save_pretrained(tmp_path / "models" / name)
        for f in (zoo / "models" / "base").glob("*token*"):
            shutil.copy(f, tmp_path / "models" / name / f.name)
    recipe = _recipe(tmp_path, tmp_path)
    state = compute_sequential(parse_recipe(recipe.read_text()), _data(zoo), samples=3)
    out = run_merge(parse_recipe(recipe.read_text()), tmp_path / "m", progress=False).out_dir
    merged = load_file(out / "model.safetensors")
    for name in set(merged) & set(state):  # Mixtral's experts are stored per expert, run fused: not compared
        assert torch.equal(merged[name], state[name]), name
    measured = load_file(tmp_path / "sort.seq.safetensors")
    assert measured and all(n in merged and t.shape[0] == 2 for n, t in measured.items())
    assert ("lm_head.weight" in measured) == ("lm_head.weight" in merged)  # a tied output layer is not


class _Routed(torch.nn.Module):
    """Each token goes to one of two expert layers, by the sign of a router: a routed mixture."""

    def __init__(self, bias: float):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.router = torch.nn.Embedding(10, 4), torch.nn.Linear(4, 1)
        self.e0, self.e1, self.out = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 10)
        with torch.no_grad():
            self.router.bias.fill_(bias)

    def forward(self, input_ids):
        h = self.embed(input_ids)[0]
        first = self.router(h)[:, 0] > 0
        y = torch.zeros_like(h)
        if first.any():
            y[first] = self.e0(h[first])
        if (~first).any():
            y[~first] = self.e1(h[~first])
        return self.out(y)


def test_layers_whose_rows_do_not_pair_up_get_no_statistics_and_are_averaged():
    from evaluation.sequential_calibration import _measure

    parent, merged = _Routed(10.0), _Routed(-10.0)  # the parent routes every token to e0, the merged model to e1
    ids = [torch.tensor([[1, 2, 3]]), torch.tensor([[4, 5]])]
    assert set(_measure(parent, merged, ["router"], ids)) == {"router.weight"}
    assert _measure(parent, merged, ["e0", "e1"], ids) == {}
    out = _measure(parent, merged, ["out"], ids)["out.weight"]
    assert out.shape == (2, 4, 4) and out.dtype == torch.float64
