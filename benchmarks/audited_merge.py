"""What checking the audited bytes costs a merge: a linear merge of two ~540 MB bf16 parents.

Builds bench-out/audited/{base,a} once (Llama-shaped, 16 layers, two shards each), then times
`mergeops merge` of a 0.5/0.5 linear recipe pinned to the parents' content ids, each run in a
fresh process, and prints the wall time of each run and their median. Run it before and after a
change to the merge's reading or hashing: `python benchmarks/audited_merge.py [RUNS]`.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from merge.manifest import content_id  # noqa: E402
from merge.synthetic import write_llama  # noqa: E402

OUT = ROOT / "bench-out" / "audited"
SHAPE = dict(hidden=1024, layers=16, intermediate=2816, vocab=32000, shard_bytes=400 * 1024**2)


def main(runs: int = 3) -> None:
    if not (OUT / "a" / "config.json").exists():
        shutil.rmtree(OUT, ignore_errors=True)
        base = write_llama(OUT / "base", seed=0, **SHAPE)
        write_llama(OUT / "a", seed=1, base=base, noise=0.005, **SHAPE)
    parents = [OUT / "base", OUT / "a"]
    size = sum(f.stat().st_size for p in parents for f in p.iterdir())
    recipe = OUT / "linear.yaml"
    recipe.write_text(yaml.safe_dump({
        "merge_method": "linear", "dtype": "bfloat16",
        "models": [{"model": str(p), "parameters": {"weight": 0.5}} for p in parents],
        "pins": {str(p): content_id(p) for p in parents}}))
    times = []
    for i in range(runs):
        out = OUT / f"merged-{i}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "flows.cli", "merge", str(recipe), "--out", str(out)], cwd=ROOT,
                       check=True, capture_output=True)
        times.append(time.perf_counter() - start)
        shutil.rmtree(out)
        print(f"run {i + 1}: {times[-1]:.2f} s", flush=True)
    print(f"linear merge of 2 parents ({size / 1e6:.0f} MB read): median {statistics.median(times):.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
