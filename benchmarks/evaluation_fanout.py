"""The pipeline's evaluation step, serial against fanned out per model over a local Dask cluster.

Each measurement starts from an empty evaluation cache, so every model really runs lm-eval and its
leakage checks; the Dask time includes starting the cluster's worker processes (what a run pays).
The reports are compared too: a faster path that scores differently would be no path at all.

    python benchmarks/evaluation_fanout.py [--zoo DIR | --profile tiny|demo] [--workers 2] [--repeat 1]

Without ``--zoo`` a zoo of ``--profile`` is built first (not timed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

POLICY = {"domain_minimums": {"default": None}, "retention_minimums": {"default": None}}


def _models(zoo: Path) -> list[tuple[str, str, str]]:
    """Every specialist of the zoo as a parent, its base standing in for the candidate."""
    doc = json.loads((zoo / "zoo.json").read_text())
    specialists = [m["name"] for m in doc["models"] if m["role"] == "specialist"]
    return [(str(zoo / "models" / "base"), "merged", "base")] + [
        (str(zoo / "models" / name), "parent", name) for name in specialists]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path)
    ap.add_argument("--profile", default="tiny", choices=["tiny", "demo"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    from flows.runtime import LocalPrefectApi, quiet_environment

    quiet_environment()
    api = LocalPrefectApi().begin()
    from flows.evaluation import run_evaluation
    from flows.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        zoo = args.zoo
        if zoo is None:
            from evaluation.zoo import build_zoo

            zoo = tmp / "zoo"
            build_zoo(zoo, profile=args.profile, seed=0)
        api.wait()
        (tmp / "policy.yaml").write_text(json.dumps(POLICY))
        models = _models(zoo)
        times: dict[str, list[float]] = {"serial": [], f"dask x{args.workers}": []}
        reports = {}
        for i in range(args.repeat):
            for label, settings in (("serial", Settings()), (f"dask x{args.workers}", Settings(
                    evaluation_workers=args.workers))):
                start = time.perf_counter()
                reports[label] = run_evaluation(settings, models, "zoo", str(zoo), str(tmp / f"cache-{label}-{i}"),
                                                str(tmp / "policy.yaml"), "pass", None)
                times[label].append(time.perf_counter() - start)
        same = len({json.dumps(r, sort_keys=True) for r in reports.values()}) == 1
        print(f"{len(models)} models, suite zoo, profile {args.profile if args.zoo is None else zoo}")
        for label, values in times.items():
            print(f"{label:>10}: {statistics.median(values):7.1f} s  (runs: {', '.join(f'{v:.1f}' for v in values)})")
        print(f"reports identical: {same}")
    api.stop()


if __name__ == "__main__":
    main()
