"""An evolutionary search as an MLflow run: its settings, its per-generation curve, its winner.

One run per search in the experiment ``mergeops-evolve`` (apart from ``mergeops``, which holds the
registered candidates): params ``algorithm``, ``budget``, ``seed``, ``recipe_sha256`` (the evolved
recipe's, as the winner's lineage records it) and ``start_recipe_sha256``; metrics ``best``,
``mean``, ``diversity`` and ``best_so_far`` with ``step`` = generation, read from ``search.json``;
the artifacts ``recipe.yaml`` and ``search.json``. When the winner is registered, the run is tagged
with the model version, so the search and the candidate point at each other.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag

from registry.mlflow_versions import TAG, client, experiment_id

EXPERIMENT = "mergeops-evolve"
_CURVES = ("best", "mean", "diversity", "best_so_far")
_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def log_search(tracking_uri: str, out_dir: Path, *, recipe_sha256: str, start_recipe_sha256: str,
               name: str, artifact_location: str | None = None) -> str:
    """Log the finished search in ``out_dir`` (``search.json``, ``recipe.yaml``) as one run; its id."""
    out_dir = Path(out_dir)
    search = json.loads((out_dir / "search.json").read_text())
    c = client(tracking_uri)
    run = c.create_run(experiment_id(c, EXPERIMENT, artifact_location), run_name=name,
                       tags={f"{TAG}kind": "evolve", f"{TAG}out_dir": str(out_dir.resolve())})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        params = {"algorithm": search["algorithm"], "budget": search["budget"], "seed": search["seed"],
                  "recipe_sha256": recipe_sha256, "start_recipe_sha256": start_recipe_sha256,
                  "dev_examples": search["dev_examples"], "generation_size": search["generation_size"]}
        metrics = [Metric(key, float(g[key]), now, int(g["generation"]))
                   for g in search["generations"] for key in _CURVES]
        metrics += [Metric("dev_score", float(search["best"]["dev_score"]), now, 0),
                    Metric("evaluations", float(search["evaluations"]), now, 0)]
        c.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        for start in range(0, len(metrics), _BATCH):
            c.log_batch(run_id, metrics=metrics[start:start + _BATCH])
        for artifact in ("recipe.yaml", "search.json"):
            c.log_artifact(run_id, str(out_dir / artifact))
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    c.set_terminated(run_id, "FINISHED")
    return run_id


def tag_search(tracking_uri: str, run_id: str, outcome: dict[str, str]) -> None:
    """Record what became of the winner (``registered``: "NAME vN", ``pipeline``: its status)."""
    client(tracking_uri).log_batch(run_id, tags=[RunTag(f"{TAG}{k}", v) for k, v in outcome.items()])
