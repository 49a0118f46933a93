"""Evolutionary merging on the demo zoo: M2N2, M2N2 with alpha = 0, CMA-ES and random search at
equal budget, several seeds each, judged on the held-out eval split the searches never see.

Each arm runs ``flows.evolve.evolve`` (as ``mergeops evolve`` does: retention objective on the dev
split, ``--dev-size`` prompts per domain) from ``recipes/demo.yaml``, then scores its winner (OUT/model, as
written) on the zoo's eval split (200 prompts per domain) with the in-memory exact-match scorer,
the zoo scorecard's rule. The table gives, per arm, each domain's eval score and retention (over the
specialist's own eval score), the least retention, and wall time; then the mean least retention
per arm. The shipped demo merge is the row to beat (and, with another ``--recipe``, the start
recipe's own merge is shown under its name). Usage:

    python benchmarks/evolve_ablation.py [--zoo data/zoo] [--recipe recipes/demo.yaml] [--budget 200] [--dev-size 100]
                                         [--seeds 3] [--arms M2N2,CMA-ES] [--out bench-out/evolve]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from evaluation.dev_scoring import DevScorer  # noqa: E402
from evaluation.domains import read_jsonl  # noqa: E402
from evaluation.zoo_source import domain_files, load_zoo  # noqa: E402
from flows.evolve import dev_records, evolve  # noqa: E402
from merge.evolve.m2n2 import M2N2Config  # noqa: E402
from merge.memory import ParentTensors, merge_in_memory  # noqa: E402
from merge.recipe import load_recipe  # noqa: E402

DEMO = ROOT / "recipes" / "demo.yaml"  # the shipped demo merge: the row to beat
ARMS = {  # label -> (algorithm, M2N2 settings)
    "M2N2": ("m2n2", M2N2Config()),
    "M2N2 alpha=0": ("m2n2", M2N2Config(alpha=0.0)),
    "CMA-ES": ("cmaes", None),
    "random": ("random", None),
}


def _weights(model_dir: Path) -> dict:
    out = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", type=Path, default=ROOT / "data" / "zoo")
    ap.add_argument("--recipe", type=Path, default=DEMO, help="the recipe every search starts from")
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--dev-size", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ", ".join(ARMS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "evolve")
    args = ap.parse_args()
    zoo = args.zoo.resolve()
    recipe = load_recipe(args.recipe, ROOT)
    specialists = {m.domain: zoo / m.path for m in load_zoo(zoo).models
                   if m.role == "specialist" and str(zoo / m.path) in {str(recipe.path_of(r)) for r in recipe.model_refs()}}
    domains = sorted(specialists)
    files = domain_files(zoo)
    evals = {d: read_jsonl(files[d].eval) for d in domains}
    scorer = DevScorer(zoo / "models" / "base", [r for d in domains for r in evals[d]])
    bounds = np.cumsum([0] + [len(evals[d]) for d in domains])

    def per_domain(tensors: dict) -> dict[str, float]:
        s = scorer(tensors)
        return {d: float(s[a:b].mean()) for d, a, b in zip(domains, bounds[:-1], bounds[1:])}

    own = {d: per_domain(_weights(specialists[d]))[d] for d in domains}
    start = per_domain(merge_in_memory(recipe, ParentTensors()))
    shipped = load_recipe(DEMO, ROOT)
    demo = start if shipped.sha256 == recipe.sha256 else per_domain(merge_in_memory(shipped, ParentTensors()))
    records = dev_records("zoo", zoo, args.dev_size)
    print(f"demo zoo {zoo}; eval split {', '.join(f'{d} {len(evals[d])}' for d in domains)} prompts; "
          f"budget {args.budget} candidates per run, dev split {args.dev_size} prompts per domain")
    head = "".join(f"{d:>15s}" for d in domains)
    print(f"{'arm':14s}{'seed':>5s}{head}{'least':>8s}{'time':>8s}")

    def row(label: str, seed: str, scores: dict, seconds: float | None) -> float:
        ret = {d: scores[d] / own[d] for d in domains}
        cells = "".join(f"{scores[d]:7.3f} ({ret[d]:4.0%})" for d in domains)
        t = f"{seconds:7.0f}s" if seconds is not None else ""
        print(f"{label:14s}{seed:>5s}{cells}{min(ret.values()):8.1%}{t}", flush=True)
        return min(ret.values())

    row("specialists", "-", own, None)
    row("demo merge", "-", demo, None)
    if shipped.sha256 != recipe.sha256:
        row((recipe.name or "start")[:14], "-", start, None)
    summary: dict[str, list[float]] = {}
    for label in [a.strip() for a in args.arms.split(",")]:
        algorithm, m2n2 = ARMS[label]
        for seed in range(args.seeds):
            out = args.out / f"{algorithm}-{'a0' if m2n2 and m2n2.alpha == 0 else 'a1'}-s{seed}-b{args.budget}-d{args.dev_size}"
            if not (out / "search.json").is_file():
                shutil.rmtree(out, ignore_errors=True)  # an unfinished run of other code: start afresh
            t0 = time.perf_counter()
            evolve(recipe, out, records=records, scorer_dir=zoo / "models" / "base", algorithm=algorithm,
                   budget=args.budget, seed=seed, m2n2=m2n2, progress=False)
            summary.setdefault(label, []).append(
                row(label, str(seed), per_domain(_weights(out / "model")), time.perf_counter() - t0))
    print("\nleast eval retention, mean over seeds (sd); demo merge "
          f"{min(demo[d] / own[d] for d in domains):.1%}")
    for label, values in summary.items():
        print(f"{label:14s} {np.mean(values):6.1%} ({np.std(values):.1%})  " + "  ".join(f"{v:.1%}" for v in values))


if __name__ == "__main__":
    main()
