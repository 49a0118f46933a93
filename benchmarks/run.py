"""mergeops vs mergekit-yaml on a ~374M-parameter bf16 Llama-shaped trio (`make bench`).

Builds bench-out/parents/{base,a,b} once (sharded safetensors; children = base + noise), then
runs the same recipes through `mergeops merge` and `mergekit-yaml`, each in a fresh process, and
prints wall time and peak RSS (the child's ru_maxrss) side by side, their ratios, and how the
output tensors compare (bit-equal, or max |diff| and share of differing entries).

Targets: linear <= 0.5x mergekit wall, ties <= 0.2x, peak RSS <= 0.5x.

`scaling` (also run by default, last): mergeops alone on the same linear and ties recipes over bf16
Llama-shaped trios of about 374M and 1.5B parameters (bench-out/scale-*/): wall time should grow
with the parameter count, peak RSS with the largest tensor only (streaming), not with the model.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from merge.synthetic import write_llama  # noqa: E402

OUT = ROOT / "bench-out"
BIN = ROOT / ".venv" / "bin"
SHAPE = dict(hidden=1024, layers=24, intermediate=2816, vocab=32000)  # 374M parameters
# Cost as models grow: (label, shape). 1.5B: twice the width, ~4x the parameters, 26 layers.
SCALES = {"374M": SHAPE, "1.5B": dict(hidden=2048, layers=26, intermediate=5632, vocab=32000)}
W = {"weight": 0.5}
RECIPES = {
    "linear": {"merge_method": "linear", "models": [{"model": "base", "parameters": W},
                                                    {"model": "a", "parameters": W}, {"model": "b", "parameters": W}]},
    "ties": {"merge_method": "ties", "base_model": "base",
             "models": [{"model": "base"}, {"model": "a", "parameters": {**W, "density": 0.5}},
                        {"model": "b", "parameters": {**W, "density": 0.5}}]},
    "dare_ties": {"merge_method": "dare_ties", "base_model": "base",
                  "models": [{"model": "base"}, {"model": "a", "parameters": {**W, "density": 0.5}},
                             {"model": "b", "parameters": {**W, "density": 0.5}}]},
    "slerp": {"merge_method": "slerp", "base_model": "base",
              "models": [{"model": "base"}, {"model": "a"}], "parameters": {"t": [0.0, 0.5, 1.0]}},
    "sce": {"merge_method": "sce", "base_model": "base", "models": [{"model": "a"}, {"model": "b"}],
            "parameters": {"select_topk": 0.5}},
    # children differ from the base by ~0.005: t = 0.002 swaps some entries and moves the rest
    "nearswap": {"merge_method": "nearswap", "base_model": "base", "models": [{"model": "base"}, {"model": "a"}],
                 "parameters": {"t": 0.002}},
    # out_dtype: mergekit otherwise writes the float32 its kernel returns for bf16 inputs
    "arcee_fusion": {"merge_method": "arcee_fusion", "base_model": "base",
                     "models": [{"model": "base"}, {"model": "a"}], "out_dtype": "bfloat16"},
    "ram": {"merge_method": "ram", "base_model": "base", "models": [{"model": "a"}, {"model": "b"}],
            "parameters": {"epsilon": 0.002}},
    "ramplus_tl": {"merge_method": "ramplus_tl", "base_model": "base", "models": [{"model": "a"}, {"model": "b"}],
                   "parameters": {"epsilon": 0.002}, "out_dtype": "bfloat16"},
}


def _parents(shape: dict = SHAPE, parents: Path = OUT / "parents") -> Path:
    if not (parents / "b" / "config.json").exists():
        shutil.rmtree(parents, ignore_errors=True)
        t = time.time()
        kw = dict(shape, shard_bytes=400 * 1024**2)
        base = write_llama(parents / "base", seed=0, **kw)
        write_llama(parents / "a", seed=1, base=base, noise=0.005, **kw)
        write_llama(parents / "b", seed=2, base=base, noise=0.005, **kw)
        print(f"built parents in {time.time() - t:.0f}s", flush=True)
    return parents


# Runs the measured command as a child of a fresh, small interpreter. Linux carries a process's
# peak RSS across exec, and subprocess starts children with vfork, so a command started directly
# from this process would report this process's own peak (torch and the tensors compared so far)
# whenever its own is smaller. A fork of the small wrapper starts from a clean slate.
_WRAPPER = """
import os, sys, time
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), time.perf_counter() - t, usage.ru_maxrss)
"""


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one command."""
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], cwd=cwd, capture_output=True, text=True)
    code, wall, maxrss = proc.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return float(wall), int(maxrss) / 1024**2  # KiB -> GiB


def _compare(a: Path, b: Path) -> str:
    def index(d: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                out.update({k: f for k in h.keys()})
        return out

    ia, ib = index(a), index(b)
    if set(ia) != set(ib):
        return f"tensor names differ: {sorted(set(ia) ^ set(ib))[:3]}"
    worst, differing, total = 0.0, 0, 0
    for name in ia:
        with safe_open(str(ia[name]), "pt") as ha, safe_open(str(ib[name]), "pt") as hb:
            x, y = ha.get_tensor(name), hb.get_tensor(name)
        total += x.numel()
        if x.dtype != y.dtype:
            return f"dtype differs at {name}: {x.dtype} vs {y.dtype}"
        if not torch.equal(x, y):
            d = (x.float() - y.float()).abs()
            worst = max(worst, d.max().item())
            differing += int((d != 0).sum())
    return "bit-equal" if not differing else f"max|diff| {worst:.3g}, {differing / total:.3%} entries differ"


def _absolute(doc: dict, parents: Path) -> dict:
    """The recipe with absolute parent paths: `mergeops` reads relative ones from the project root
    (the folder of mergeops.yaml), mergekit from its working directory."""
    doc = {**doc, "models": [{**m, "model": str(parents / m["model"])} for m in doc["models"]]}
    return {**doc, "base_model": str(parents / doc["base_model"])} if "base_model" in doc else doc


def _params(shape: dict) -> int:
    h, n, f, v = shape["hidden"], shape["layers"], shape["intermediate"], shape["vocab"]
    return n * (4 * h * h + 3 * h * f + 2 * h) + 2 * v * h + h


def scaling() -> None:
    """mergeops wall time and peak RSS per recipe and size; per-parameter time shows linearity."""
    rows = []
    for label, shape in SCALES.items():
        parents = _parents(shape, OUT / "parents" if shape == SHAPE else OUT / f"scale-{label}")
        largest = shape["vocab"] * shape["hidden"] * 2 / 1024**3  # the embedding, bf16, GiB
        for name in ("linear", "ties"):
            runs = OUT / "runs"
            shutil.rmtree(runs, ignore_errors=True)
            runs.mkdir(parents=True)
            (runs / "r.yaml").write_text(yaml.safe_dump(_absolute(RECIPES[name], parents)))
            wall, rss = _timed([str(BIN / "mergeops"), "merge", str(runs / "r.yaml"), "--out", str(runs / "mo")], parents)
            rows.append((label, name, _params(shape), wall, rss, largest))
            print(f"{label} {name}: {wall:.1f}s {rss:.2f} GB", flush=True)
    shutil.rmtree(OUT / "runs", ignore_errors=True)
    print()
    print(f"{'size':6} {'recipe':8} {'params':>14} {'wall s':>7} {'s/1e9 params':>13} {'peak RSS GB':>12} "
          f"{'largest tensor GB':>18}")
    for label, name, n, wall, rss, largest in rows:
        print(f"{label:6} {name:8} {n:14,} {wall:7.1f} {wall / n * 1e9:13.1f} {rss:12.2f} {largest:18.3f}")


def main() -> None:
    args = sys.argv[1:]
    chosen = [a for a in args if a != "scaling"] if args else list(RECIPES)  # e.g. `run.py slerp ties`
    unknown = sorted(set(chosen) - set(RECIPES))
    if unknown:
        raise SystemExit(f"unknown benchmark {unknown[0]!r}; choose from: {', '.join(RECIPES)}, scaling")
    if chosen:
        compare(chosen)
    if not args or "scaling" in args:
        scaling()


def compare(chosen: list[str]) -> None:
    parents = _parents()
    runs = OUT / "runs"
    rows = []
    for name in chosen:
        doc = _absolute(RECIPES[name], parents)
        shutil.rmtree(runs, ignore_errors=True)
        runs.mkdir(parents=True)
        recipe = runs / f"{name}.yaml"
        doc = _absolute(doc, parents)
        recipe.write_text(yaml.safe_dump(doc))
        mk = _timed([str(BIN / "mergekit-yaml"), str(recipe), str(runs / "mk"), "--random-seed", "0", "--quiet",
                     "--no-copy-tokenizer", "--no-write-model-card"], parents)
        ours = _timed([str(BIN / "mergeops"), "merge", str(recipe), "--out", str(runs / "mo")], parents)
        rows.append((name, ours, mk, _compare(runs / "mo", runs / "mk")))
        if name == "ties":  # the same recipe with mergekit's argsort tie choice: bit-equal expected
            recipe.write_text(yaml.safe_dump({**doc, "magnitude_ties": "sort"}))
            sort = _timed([str(BIN / "mergeops"), "merge", str(recipe), "--out", str(runs / "mo-sort")], parents)
            rows.append(("ties (magnitude_ties: sort)", sort, mk, _compare(runs / "mo-sort", runs / "mk")))
        print(_row(*rows[-1]), flush=True)
    print()
    print(f"{'recipe':30} {'mergeops s':>10} {'mergekit s':>10} {'wall x':>7} {'mergeops GB':>11} "
          f"{'mergekit GB':>11} {'RSS x':>6}  tensors")
    for row in rows:
        print(_row(*row))
    shutil.rmtree(runs, ignore_errors=True)


def _absolute(doc, parents: Path):
    """The recipe with each parent named by its absolute path: mergeops reads relative paths from
    the project root (the folder of mergeops.yaml), mergekit from the working directory."""
    if isinstance(doc, dict):
        return {k: _absolute(v, parents) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_absolute(v, parents) for v in doc]
    return str(parents / doc) if isinstance(doc, str) and (parents / doc / "config.json").exists() else doc


def _row(name, ours, mk, cmp) -> str:
    return (f"{name:30} {ours[0]:10.1f} {mk[0]:10.1f} {ours[0] / mk[0]:7.2f} {ours[1]:11.2f} {mk[1]:11.2f} "
            f"{ours[1] / mk[1]:6.2f}  {cmp}")


if __name__ == "__main__":
    main()
