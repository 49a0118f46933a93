"""The governed pipeline's own cost: what `mergeops run` spends beyond merging and evaluating.

A run of a recipe whose merge and evaluations are already cached, and whose version is already
registered, merges nothing and evaluates nothing ("unchanged"): its whole wall time is the
pipeline's overhead (process start, Prefect, the audit's hashing, registry lookups). A run that the
audit refuses measures the overhead up to the first refusal. Both are timed as the shell sees them.

    python benchmarks/pipeline_overhead.py [--zoo DIR] [--repeat 3] [--code DIR]

``--code DIR`` runs another checkout's CLI (``python -m flows.cli`` with ``DIR`` first on the path),
to compare two versions on the same machine, models and caches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = """\
name: overhead
merge_method: linear
models:
  - model: {zoo}/models/reverse
    parameters: {{weight: 0.5}}
  - model: {zoo}/models/sort
    parameters: {{weight: 0.5}}
dtype: float32
"""
REFUSED = RECIPE.replace("name: overhead", "name: overhead-refused\nintended_use: commercial").replace(
    "models/sort", "models/swap")  # swap is cc-by-nc-4.0: refused for commercial use
POLICY = "domain_minimums: {default: null}\nretention_minimums: {default: null}\n"


def _timed(cmd: list[str], env: dict, cwd: Path) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, help="a tiny-profile zoo (default: build one into a temp dir)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--code", type=Path, help="another checkout whose CLI to time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mergeops-overhead-") as tmp:
        work = Path(tmp)
        zoo = args.zoo
        if zoo is None:
            from evaluation.zoo import build_zoo

            zoo = work / "zoo"
            build_zoo(zoo, profile="tiny", seed=0)
        (work / "run.yaml").write_text(RECIPE.format(zoo=Path(zoo).resolve()))
        (work / "refused.yaml").write_text(REFUSED.format(zoo=Path(zoo).resolve()))
        (work / "policy.yaml").write_text(POLICY)
        env = {**os.environ, "MERGEOPS_HOME": str(work / "home"), "PREFECT_HOME": str(work / "prefect"),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("MLFLOW_TRACKING_URI", None)
        env.pop("PREFECT_API_URL", None)
        if args.code:
            env["PYTHONPATH"] = str(args.code.resolve())
        cli = [sys.executable, "-m", "flows.cli"]
        first, rc = _timed([*cli, "run", "run.yaml", "--policy", "policy.yaml", "--suite", "zoo",
                            "--zoo", str(zoo), "--requested-by", "alice"], env, work)
        if rc != 0:
            print(f"the first run failed (exit {rc})", file=sys.stderr)
            return 1
        unchanged = [_timed([*cli, "run", "run.yaml", "--policy", "policy.yaml", "--suite", "zoo", "--zoo", str(zoo),
                             "--requested-by", "alice"], env, work)[0] for _ in range(args.repeat)]
        refused = [_timed([*cli, "run", "refused.yaml", "--suite", "zoo", "--zoo", str(zoo)], env, work)[0]
                   for _ in range(args.repeat)]
    print(json.dumps({"code": str(args.code or Path(__file__).resolve().parent.parent),
                      "first_run_s": round(first, 1),
                      "unchanged_run_s": {"median": round(statistics.median(unchanged), 1),
                                          "all": [round(x, 1) for x in unchanged]},
                      "refused_run_s": {"median": round(statistics.median(refused), 1),
                                        "all": [round(x, 1) for x in refused]}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
