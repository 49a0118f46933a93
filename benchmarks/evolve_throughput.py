"""Candidate throughput of an evolutionary search: in memory against a disk round trip.

In memory: ``merge_in_memory`` (parents read once) + ``DevScorer`` on the dev split. Round trip:
``mergeops merge`` + ``mergeops evaluate`` per candidate, as a loop of plain commands would do.
Both score the same ties candidates of the zoo's specialists. Usage:

    python benchmarks/evolve_throughput.py --zoo data/zoo [--candidates 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from evaluation.dev_scoring import DevScorer
from evaluation.dev_split import zoo_dev_records
from evaluation.domains import read_jsonl
from evaluation.zoo_source import domain_files
from merge.evolve.space import RecipeSpace
from merge.memory import ParentTensors, merge_in_memory
from merge.recipe import parse_recipe

DOMAINS = ["reverse", "sort", "swap"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--candidates", type=int, default=5)
    args = ap.parse_args()
    zoo = args.zoo.resolve()
    m = zoo / "models"
    text = (f"merge_method: ties\nbase_model: {m / 'base'}\nmodels:\n  - {{model: {m / 'base'}}}\n"
            + "".join(f"  - {{model: {m / d}, parameters: {{weight: 0.5, density: 0.5}}}}\n" for d in DOMAINS)
            + "dtype: float32\n")
    space = RecipeSpace(parse_recipe(text), blocks=4)
    rng = np.random.default_rng(0)
    docs = [space.to_doc(rng.uniform(space.bounds()[:, 0], space.bounds()[:, 1])) for _ in range(args.candidates)]
    # The same work on both sides: every domain the zoo suite evaluates, as many prompts as its eval split.
    files = domain_files(zoo)
    n_eval = len(read_jsonl(files[DOMAINS[0]].eval))
    dev = zoo_dev_records(zoo, sorted(files), n=n_eval)
    records = [r for d in sorted(files) for r in dev[d]]

    start = time.perf_counter()
    parents, scorer = ParentTensors(), DevScorer(m / "base", records)
    for doc in docs:
        scorer(merge_in_memory(parse_recipe(yaml.safe_dump(doc)), parents))
    in_memory = (time.perf_counter() - start) / len(docs)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:  # a fresh home: nothing cached from earlier runs
        env = {**os.environ, "MERGEOPS_HOME": str(Path(tmp) / "home"), "MERGEOPS_PROGRESS": "off"}
        for i, doc in enumerate(docs):
            recipe, out = Path(tmp) / f"r{i}.yaml", Path(tmp) / f"m{i}"
            recipe.write_text(yaml.safe_dump(doc))
            cli = [sys.executable, "-m", "flows.cli"]
            subprocess.run([*cli, "merge", str(recipe), "--out", str(out)], check=True, capture_output=True, env=env)
            subprocess.run([*cli, "evaluate", "--zoo", str(zoo), "--merged", str(out), "--json", str(Path(tmp) / f"e{i}.json")],
                           check=True, capture_output=True, env=env)
    disk = (time.perf_counter() - start) / len(docs)
    print(f"{len(records)} dev prompts ({', '.join(sorted(files))}), {len(docs)} ties candidates of {', '.join(DOMAINS)}")
    print(f"in memory (merge + dev score): {in_memory:8.2f} s/candidate")
    print(f"disk round trip (merge + evaluate CLI): {disk:8.2f} s/candidate")
    print(f"speed-up: {disk / in_memory:.1f}x")


if __name__ == "__main__":
    main()
