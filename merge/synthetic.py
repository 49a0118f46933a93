"""Synthetic Llama-shaped checkpoints for tests and benchmarks (no download, seconds to build).

``write_llama`` writes an HF directory (config.json, a minimal tokenizer.json, sharded
safetensors + index). Children are the base plus seeded noise, so task vectors are meaningful.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from merge.layout import INDEX_NAME


def llama_shapes(hidden: int, layers: int, intermediate: int, vocab: int, kv_heads_ratio: int = 1) -> dict[str, tuple[int, ...]]:
    kv = hidden // kv_heads_ratio
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "mlp.gate_proj.weight": (intermediate, hidden),
            p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
        }
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def _tensor(name: str, shape, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return (1 + 0.1 * torch.randn(shape, generator=gen)).to(dtype)
    return (0.02 * torch.randn(shape, generator=gen)).to(dtype)


def write_llama(out: Path, *, hidden: int = 64, layers: int = 4, intermediate: int = 128, vocab: int = 256,
                seed: int = 0, base: Path | None = None, noise: float = 0.01, dtype: torch.dtype = torch.bfloat16,
                shard_bytes: int = 1 << 62, model_type: str = "llama") -> Path:
    """Write a Llama-shaped checkpoint; with ``base``, weights are base + noise * N(0, 1)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shapes = llama_shapes(hidden, layers, intermediate, vocab)
    base_files = {}
    if base is not None:
        from safetensors import safe_open

        for f in sorted(Path(base).glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                base_files.update({k: str(f) for k in h.keys()})
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, shape in shapes.items():
        if base is not None:
            from safetensors import safe_open

            with safe_open(base_files[name], "pt") as h:
                t = h.get_tensor(name)
            t = (t.float() + noise * torch.randn(shape, generator=gen)).to(dtype)
        else:
            t = _tensor(name, shape, gen, dtype)
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1
             else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for fname, tensors in zip(names, shards):
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
    if len(shards) > 1:
        weight_map = {k: fname for fname, tensors in zip(names, shards) for k in tensors}
        (out / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": model_type, "hidden_size": hidden,
        "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 16),
        "num_key_value_heads": max(1, hidden // 16), "vocab_size": vocab, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "torch_dtype": str(dtype).removeprefix("torch."),
        "hidden_act": "silu",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    vocab_map = {f"t{i}": i for i in range(vocab)}
    tok = {"version": "1.0", "added_tokens": [], "model": {"type": "WordLevel", "vocab": vocab_map, "unk_token": "t0"},
           "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None}
    (out / "tokenizer.json").write_text(json.dumps(tok))
    return out
