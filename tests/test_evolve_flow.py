"""The `evolve` flow end to end: a real Prefect run (the test server), a real MLflow sqlite store,
real DVC and lm-eval on tiny-zoo models. The search is logged as an MLflow run with per-generation
metrics; its winner goes through the governed pipeline to a candidate whose lineage holds the
evolved recipe; a multi-stage recipe of the search (a crossover of a crossover) passes the audit on its real
parents and registers with its stages in the lineage.

Tiny models score 0 on every dev prompt, so the winner is the search's first seed (the start
recipe's merge, a one-stage recipe); the crossover is taken from the search's checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.evolve import CHECKPOINT, _Candidates
from flows.evolve_flow import evolve_flow
from flows.pipeline import merge_pipeline
from flows.settings import get_settings
from merge.manifest import content_id
from merge.recipe import load_recipe, parse_recipe

pytestmark = pytest.mark.heavy  # a Prefect server, a search, the governed pipeline: `make stack-test`

RECIPE = """\
name: tiny-linear
merge_method: linear
models:
  - model: {zoo}/models/reverse
    parameters: {{weight: 0.5}}
  - model: {zoo}/models/sort
    parameters: {{weight: 0.5}}
dtype: float32
"""
RELAXED_POLICY = "domain_minimums: {default: null}\nretention_minimums: {default: null}\n"  # tiny models score ~0


@pytest.fixture(scope="module")
def ws(tiny_zoo: Path, tmp_path_factory, prefect_server):
    root = tmp_path_factory.mktemp("evolve-flow")
    (root / "recipe.yaml").write_text(RECIPE.format(zoo=tiny_zoo))
    (root / "policy.yaml").write_text(RELAXED_POLICY)
    mp = pytest.MonkeyPatch()
    mp.setenv("MERGEOPS_HOME", str(root / "home"))
    for var in ("MLFLOW_TRACKING_URI", "MERGEOPS_MLFLOW_TRACKING_URI", "PREFECT_API_URL", "MERGEOPS_ZOO"):
        mp.delenv(var, raising=False)
    mp.chdir(root)
    yield root
    mp.undo()


@pytest.fixture(scope="module")
def flowed(ws: Path, tiny_zoo: Path) -> dict:
    return evolve_flow(str(ws / "recipe.yaml"), str(ws / "out"), zoo_dir=str(tiny_zoo), suite="zoo", algorithm="m2n2", budget=5,
                       seed=0, dev_size=2, register_as="tiny-evolved", policy_path=str(ws / "policy.yaml"),
                       requested_by="alice")


def _lineage(name: str, spec: str):
    from registry.mlflow_registry import load_lineage, resolve

    tracking = get_settings().tracking_uri
    return load_lineage(tracking, resolve(tracking, f"{name}@{spec}"))


def test_the_search_is_an_mlflow_run_with_per_generation_metrics(ws: Path, flowed: dict) -> None:
    from registry.mlflow_versions import client
    from registry.search_runs import EXPERIMENT

    c = client(get_settings().tracking_uri)
    run = c.get_run(flowed["search_run_id"])
    assert c.get_experiment(run.info.experiment_id).name == EXPERIMENT and run.info.status == "FINISHED"
    evolved = (ws / "out" / "recipe.yaml").read_bytes()
    assert run.data.params["algorithm"] == "m2n2" and run.data.params["budget"] == "5"
    assert run.data.params["seed"] == "0"
    assert run.data.params["recipe_sha256"] == load_recipe(ws / "out" / "recipe.yaml").sha256
    assert run.data.params["start_recipe_sha256"] == load_recipe(ws / "recipe.yaml").sha256
    generations = json.loads((ws / "out" / "search.json").read_text())["generations"]
    for key in ("best", "mean", "diversity"):
        history = c.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [(g["generation"], g[key]) for g in generations], key
    assert {a.path for a in c.list_artifacts(run.info.run_id)} == {"recipe.yaml", "search.json"}
    assert Path(c.download_artifacts(run.info.run_id, "recipe.yaml", str(ws))).read_bytes() == evolved
    assert run.data.tags["mergeops.registered"] == "tiny-evolved v1"


def test_the_winner_is_a_candidate_whose_lineage_holds_the_evolved_recipe(ws: Path, tiny_zoo: Path,
                                                                         flowed: dict) -> None:
    result = flowed["pipeline"]
    assert result["name"] == "tiny-evolved" and result["status"] == "awaiting_approval"
    lineage = _lineage("tiny-evolved", "candidate")
    assert lineage.recipe.text == (ws / "out" / "recipe.yaml").read_text()
    assert lineage.recipe.sha256 == flowed["recipe_sha256"]
    # the pipeline merged the recipe again: the same bytes as the search's OUT/model
    assert lineage.merged.content_id == flowed["content_id"] == content_id(ws / "out" / "model")
    assert {p.content_id for p in lineage.parents} == {content_id(tiny_zoo / "models" / n) for n in ("reverse", "sort")}
    assert lineage.gate_verdict == "pass" and set(lineage.evaluation.scores) >= {"reverse", "sort"}


def test_a_crossover_of_the_search_passes_the_audit_on_its_real_parents(ws: Path, tiny_zoo: Path,
                                                                       flowed: dict) -> None:
    evals = json.loads((ws / "out" / CHECKPOINT).read_text())["evaluations"]
    cands = _Candidates(parse_recipe(RECIPE.format(zoo=tiny_zoo)), "m2n2", seed=0)
    crosses = [e["candidate"] for e in evals if e["candidate"]["kind"] == "cross"]
    cands.children.update({c["id"]: c for c in crosses})
    cross = max(crosses, key=lambda c: len(cands.docs(c)))
    (ws / "cross.yaml").write_text(cands.output_text(cross))
    recipe = load_recipe(ws / "cross.yaml")
    # seed 0: crossover 4 of crossover 3 of the start merge: two intermediate stages feed the last
    assert len(recipe.stages) == len(cands.docs(cross)) - 1 >= 2
    result = merge_pipeline(str(ws / "cross.yaml"), policy_path=str(ws / "policy.yaml"), suite="zoo",
                            requested_by="alice", name="tiny-evolved-cross")
    assert result["status"] == "awaiting_approval"
    lineage = _lineage("tiny-evolved-cross", "candidate")
    assert lineage.recipe.text == (ws / "cross.yaml").read_text()
    models = tiny_zoo / "models"
    assert {p.content_id for p in lineage.parents} == {content_id(models / n) for n in ("reverse", "sort")}
