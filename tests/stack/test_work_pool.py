"""The pipeline deployed to a Prefect work pool and run by workers, on the servers of a real stack:
PostgreSQL (MLflow's, its users' and Prefect's databases), S3 (MLflow's artifacts, DVC's remote), an
authenticated MLflow server, the governance service, a Prefect server and two process workers.

The project is configured as a team would: mergeops.yaml names the servers, the workers hold only
credentials (no MLflow URI, no mergeops setting), `mergeops deploy --pool merges` deploys the flows.
Four runs submitted at once end Completed with four versions and a log that verifies; a worker that
dies mid-run (with its flow run, as when its machine goes down) leaves a run marked Crashed and
nothing half-registered, and the same run submitted again completes on the other worker. The evolve
deployment searches, logs the search in MLflow and registers its winner; after a parent publishes a
new revision, one run of the watch deployment re-merges it to exactly one new candidate and the
next finds nothing to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from merge.manifest import content_id

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from servers import (BIN, OPEN_POLICY, S3_CREDENTIALS, add_user, descendants, governance_service,  # noqa: E402
                     kill_all, mergeops, mlflow_basic_auth, password, postgres, prefect_server, prefect_worker,
                     s3_server)

POOL = "merges"
MODEL = "pool-merge"
WORKER_USER = "merge-worker"
NEVER_IN_A_TEST = "0 0 1 1 *"  # the watch's schedule: real, and not due while the test runs
RECIPE = """\
name: pool-merge
merge_method: linear
seed: 0
models:
  - model: parents/base
    parameters: {{weight: {w}}}
  - model: parents/sort
    parameters: {{weight: {rest}}}
dtype: float32
"""
WEIGHTS = ("0.5", "0.6", "0.7", "0.8")  # one recipe each, submitted at once
KILLED = "0.4"  # the run whose worker dies
EVOLVED = "pool-evolved"  # the evolve run's winner, registered under this name
EVOLVE_START = """\
name: pool-evolve
merge_method: linear
seed: 0
models:
  - model: parents/base
    parameters: {weight: 0.3}
  - model: parents/sort
    parameters: {weight: 0.7}
dtype: float32
"""


@pytest.fixture(scope="module")
def pool(tmp_path_factory, tiny_zoo):
    root = tmp_path_factory.mktemp("pool")
    logs = root / "logs"
    seen: list[psutil.Process] = []  # every server, worker and flow-run process: none may outlive the stack
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(postgres(logs))
        s3 = stack.enter_context(s3_server(logs))
        mlflow = stack.enter_context(mlflow_basic_auth(
            root / "mlflow", backend=pg["createdb"]("mlflow"), auth_db=pg["createdb"]("mlflow_auth"),
            artifacts=f"s3://{s3['bucket']}/mlflow", env=s3["env"]))
        add_user(mlflow["uri"], WORKER_USER)
        svc = stack.enter_context(governance_service(mlflow["uri"], root / "service"))
        prefect = stack.enter_context(prefect_server(
            root / "prefect", pg["createdb"]("prefect").replace("postgresql://", "postgresql+asyncpg://")))
        proj = _project(root / "project", tiny_zoo, mlflow["uri"], svc, s3)
        env = _bare_environment()
        worker_env = {**env, **prefect["env"], **_credentials(), "PREFECT_WORKER_QUERY_SECONDS": "2"}
        made = subprocess.run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"],
                              env={**env, **prefect["env"]}, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        deployed = subprocess.run([str(BIN / "mergeops"), "deploy", "--pool", POOL, "--cron", NEVER_IN_A_TEST],
                                  cwd=proj, env={**env, **prefect["env"]}, capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        workers = []
        for i in (1, 2):
            (logs / f"worker-{i}").mkdir(parents=True)
            workers.append(stack.enter_context(prefect_worker(POOL, f"worker-{i}", logs / f"worker-{i}" / "worker.log",
                                                              worker_env)))
        seen += [psutil.Process(p.pid) for p in (prefect["proc"], *workers)]

        def watch_processes() -> None:
            seen.extend(p for w in workers for p in descendants(w.pid) if p not in seen)

        yield {"root": root, "proj": proj, "pg": pg, "s3": s3, "uri": mlflow["uri"], **svc, "tmp": root,
               "prefect": prefect, "workers": workers, "logs": logs, "deployed": deployed, "seen": watch_processes}
        watch_processes()
    alive = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    kill_all(alive)
    assert not alive, f"left running after the stack stopped: {[p.cmdline()[:4] for p in alive]}"


def _project(proj: Path, zoo: Path, mlflow_uri: str, svc: dict, s3: dict) -> Path:
    for model in ("base", "sort"):
        shutil.copytree(zoo / "models" / model, proj / "parents" / model)
    for w in (*WEIGHTS, KILLED):
        (proj / "recipes" / f"w{w}.yaml").parent.mkdir(exist_ok=True)
        (proj / "recipes" / f"w{w}.yaml").write_text(RECIPE.format(w=w, rest=f"{1 - float(w):.1f}"))
    (proj / "recipes" / "evolve.yaml").write_text(EVOLVE_START)
    (proj / "policy.yaml").write_text(OPEN_POLICY)
    shutil.copy(svc["public_key"], proj / "service.pub")
    (proj / "mergeops.yaml").write_text(
        f"tracking_uri: {mlflow_uri}\nservice_url: {svc['url']}\nservice_public_key: service.pub\n"
        f"dvc_remote: s3://{s3['bucket']}/dvc\ndvc_remote_endpoint: {s3['endpoint']}\n"
        f"policy: policy.yaml\nzoo: {zoo}\nwatch:\n  - recipes/w{WEIGHTS[0]}.yaml\n")
    return proj


@contextlib.contextmanager
def _client(pool):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: pool["prefect"]["api"]}):
        with get_client(sync_client=True) as client:
            yield client


def _submit(pool, weight: str):
    return _start(pool, "merge-pipeline/mergeops", recipe_path=f"recipes/w{weight}.yaml", wait_for_approval=False)


def _start(pool, deployment: str, **parameters):
    """A flow run of ``deployment`` with ``parameters`` (the deployment's own for the rest), not awaited."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: pool["prefect"]["api"]}):
        return run_deployment(deployment, timeout=0, parameters=parameters)


def _wait_final(pool, ids, timeout: float = 900) -> dict:
    """{flow run id: its final state}, once every one has one."""
    deadline = time.monotonic() + timeout
    with _client(pool) as client:
        while True:
            pool["seen"]()
            states = {i: client.read_flow_run(i).state for i in ids}
            if all(s.is_final() for s in states.values()):
                return states
            assert time.monotonic() < deadline, {i: s.type for i, s in states.items()}
            time.sleep(2)


def _versions(pool, name: str = MODEL) -> list[list[str]]:
    return pool["pg"]["sql"]("mlflow", f"SELECT version FROM model_versions WHERE name = '{name}' ORDER BY version")


def _ran(pool, i: int, flow_run_id) -> bool:
    """Whether worker ``i`` ran the flow run (its output, streamed to the worker's, links the run)."""
    return f"/runs/flow-run/{flow_run_id}" in (pool["logs"] / f"worker-{i}" / "worker.log").read_text(errors="replace")


def test_the_deployments_are_on_the_pool_with_the_watch_scheduled(pool):
    with _client(pool) as client:
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
    assert set(deployments) == {"merge-pipeline/mergeops", "mergeops-watch/mergeops", "evolve/mergeops"}
    assert {d.work_pool_name for d in deployments.values()} == {POOL}
    assert [s.schedule.cron for s in deployments["mergeops-watch/mergeops"].schedules] == [NEVER_IN_A_TEST]
    run = deployments["merge-pipeline/mergeops"]
    assert run.entrypoint == "flows.pipeline.merge_pipeline"
    assert run.job_variables["working_dir"] == str(pool["proj"])
    assert run.job_variables["env"]["MERGEOPS_CONFIG"] == str(pool["proj"] / "mergeops.yaml")
    assert run.job_variables["env"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "MLFLOW_TRACKING_PASSWORD" not in json.dumps(run.job_variables)  # credentials stay with the workers
    # Prefect's rows are in PostgreSQL
    assert pool["pg"]["sql"]("prefect", "SELECT count(*) FROM deployment") == [["3"]]


@pytest.mark.parametrize(("args", "line"), [
    (("--pool", "nope"), "error: no work pool 'nope' on the Prefect server: create it with "
                         "`prefect work-pool create nope --type process`"),
    (("--pool", POOL, "--cron", "every hour"), "error: --cron 'every hour': not a cron expression (e.g. '*/30 * * * *')"),
], ids=["missing pool", "bad cron"])
def test_a_missing_pool_or_a_bad_schedule_is_one_line(pool, args, line):
    out = subprocess.run([str(BIN / "mergeops"), "deploy", *args], cwd=pool["proj"], capture_output=True, text=True,
                         env={**_bare_environment(), **pool["prefect"]["env"]}, timeout=300)
    assert out.returncode == 2 and out.stderr.splitlines() == [line], out.stderr


def test_four_runs_at_once_make_four_versions_and_a_log_that_verifies(pool):
    runs = [_submit(pool, w) for w in WEIGHTS]
    states = _wait_final(pool, [r.id for r in runs])
    assert all(s.is_completed() for s in states.values()), {i: (s.type, s.message) for i, s in states.items()}
    assert _versions(pool) == [["1"], ["2"], ["3"], ["4"]]
    # each run's own merge, requested by the authenticated worker account, settings from mergeops.yaml
    lineages = []
    for version in ("1", "2", "3", "4"):
        shown = mergeops(pool, "carol", "lineage", f"{MODEL}@{version}", "--json")
        assert shown.returncode == 0, shown.stderr
        lineages.append(json.loads(shown.stdout))
    assert len({rec["merged"]["content_id"] for rec in lineages}) == 4
    assert {rec["requested_by"] for rec in lineages} == {WORKER_USER}
    verified = mergeops(pool, "carol", "log", "verify")
    assert verified.returncode == 0, verified.stderr
    # both workers ran some of them (each takes at most two at once)
    took = [sum(_ran(pool, i, r.id) for r in runs) for i in (1, 2)]
    assert sum(took) == 4 and min(took) >= 1, took
    assert pool["pg"]["sql"]("prefect", "SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'") == [["4"]]


def _running_task(client, flow_run_id) -> str | None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    names = [t.name for t in runs if t.state is not None and t.state.is_running()]
    return next((n for n in names if n.startswith(("merge-", "evaluate"))), None)


def test_a_worker_killed_mid_run_leaves_a_crashed_run_and_nothing_half_registered(pool):
    before = _versions(pool)
    run = _submit(pool, KILLED)
    deadline = time.monotonic() + 600
    with _client(pool) as client:
        while (step := _running_task(client, run.id)) is None:
            assert not client.read_flow_run(run.id).state.is_final(), "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.2)
    # The worker whose flow-run process carries this run, killed with that process: its machine died.
    victim = next(w for w in pool["workers"] if any(_runs(p, run.id) for p in descendants(w.pid)))
    gone = [psutil.Process(victim.pid), *descendants(victim.pid)]
    pool["seen"]()
    kill_all(gone)
    states = _wait_final(pool, [run.id], timeout=300)  # the heartbeat automation: about 90 s
    assert states[run.id].is_crashed(), (states[run.id].type, states[run.id].message)
    assert "heartbeat" in states[run.id].message

    assert _versions(pool) == before, f"killed in its {step} task, yet registered"
    verified = mergeops(pool, "carol", "log", "verify")
    assert verified.returncode == 0, verified.stderr
    repair = _as_worker(pool, "repair")
    assert repair.returncode == 0, repair.stderr
    again = _as_worker(pool, "repair")
    assert again.returncode == 0 and "nothing was left half done" in again.stdout, again.stdout + again.stderr

    # Submitted again, the same run completes on the worker still standing: one version more.
    retry = _submit(pool, KILLED)
    states = _wait_final(pool, [retry.id])
    assert states[retry.id].is_completed(), (states[retry.id].type, states[retry.id].message)
    assert _versions(pool) == [*before, [str(len(before) + 1)]]
    survivor = 2 if victim is pool["workers"][0] else 1
    assert _ran(pool, survivor, retry.id)
    assert mergeops(pool, "carol", "log", "verify").returncode == 0


def test_the_evolve_deployment_searches_logs_the_search_and_registers_its_winner(pool):
    run = _start(pool, "evolve/mergeops", recipe_path="recipes/evolve.yaml", out_dir="evolved/pool-evolve",
                 algorithm="m2n2", budget=3, dev_size=4, register_as=EVOLVED, wait_for_approval=False)
    states = _wait_final(pool, [run.id])
    assert states[run.id].is_completed(), (states[run.id].type, states[run.id].message)
    out = pool["proj"] / "evolved" / "pool-evolve"  # relative to the project, where the run starts
    search = json.loads((out / "search.json").read_text())
    assert (search["algorithm"], search["budget"], search["evaluations"]) == ("m2n2", 3, 3)

    # the search is a finished run of the experiment mergeops-evolve, one metric point per generation
    sql = pool["pg"]["sql"]
    ((run_id, status),) = sql("mlflow", "SELECT r.run_uuid, r.status FROM runs r JOIN experiments e "
                                        "ON r.experiment_id = e.experiment_id WHERE e.name = 'mergeops-evolve'")
    assert status == "FINISHED"
    params = dict(sql("mlflow", f"SELECT key, value FROM params WHERE run_uuid = '{run_id}'"))
    assert (params["algorithm"], params["budget"], params["dev_examples"]) == ("m2n2", "3", str(search["dev_examples"]))
    for key in ("best", "mean", "diversity"):
        points = sql("mlflow", f"SELECT step, value FROM metrics WHERE run_uuid = '{run_id}' AND key = '{key}' "
                               "ORDER BY step")
        assert [(int(s), float(v)) for s, v in points] == [(g["generation"], g[key]) for g in search["generations"]]
    tags = dict(sql("mlflow", f"SELECT key, value FROM tags WHERE run_uuid = '{run_id}'"))
    assert tags["mergeops.registered"] == f"{EVOLVED} v1" and tags["mergeops.pipeline"] == "awaiting_approval"

    # the winner went through the pipeline: a candidate whose lineage holds the evolved recipe
    assert _versions(pool, EVOLVED) == [["1"]] and _alias(pool, "candidate", EVOLVED) == "1"
    shown = mergeops(pool, "carol", "lineage", f"{EVOLVED}@candidate", "--json")
    assert shown.returncode == 0, shown.stderr
    lineage = json.loads(shown.stdout)
    assert lineage["recipe"]["text"] == (out / "recipe.yaml").read_text()
    assert lineage["recipe"]["sha256"] == params["recipe_sha256"]
    assert lineage["merged"]["content_id"] == content_id(out / "model")
    parents = pool["proj"] / "parents"
    assert {p["content_id"] for p in lineage["parents"]} == {content_id(parents / n) for n in ("base", "sort")}
    assert lineage["requested_by"] == WORKER_USER
    verified = mergeops(pool, "carol", "log", "verify")
    assert verified.returncode == 0, verified.stderr


def test_the_watch_deployment_remerges_a_new_parent_revision_to_exactly_one_candidate(pool):
    before = _versions(pool)
    # the parent publishes a new revision (the demo's step 6; no event: the watch runs when submitted)
    updated = subprocess.run([sys.executable, "-m", "flows.demo", "update-parent", "parents/sort"], cwd=pool["proj"],
                             env=_bare_environment(), capture_output=True, text=True, timeout=300)
    assert updated.returncode == 0 and "content id" in updated.stdout, updated.stdout + updated.stderr
    run = _start(pool, "mergeops-watch/mergeops")  # the recipes under `watch:` in mergeops.yaml
    states = _wait_final(pool, [run.id])
    assert states[run.id].is_completed(), (states[run.id].type, states[run.id].message)
    new = str(len(before) + 1)
    assert _versions(pool) == [*before, [new]]
    assert _logged(pool, run.id, f"{MODEL}: re-merging (changed since {MODEL} v{len(before)}: sort)")
    assert _alias(pool, "candidate") == new  # a candidate, never promoted
    shown = mergeops(pool, "carol", "lineage", f"{MODEL}@{new}", "--json")
    assert shown.returncode == 0, shown.stderr
    lineage = json.loads(shown.stdout)
    assert lineage["recipe"]["text"] == (pool["proj"] / "recipes" / f"w{WEIGHTS[0]}.yaml").read_text()
    assert content_id(pool["proj"] / "parents" / "sort") in {p["content_id"] for p in lineage["parents"]}
    assert lineage["requested_by"] == WORKER_USER  # the worker's account, the service's only accepted name
    triggered = pool["pg"]["sql"]("mlflow", f"SELECT value FROM registered_model_tags WHERE name = '{MODEL}' "
                                            "AND value LIKE 'remerge_triggered:%'")
    assert len(triggered) == 1, triggered

    # run again with nothing new: it completes and registers nothing
    again = _start(pool, "mergeops-watch/mergeops")
    states = _wait_final(pool, [again.id])
    assert states[again.id].is_completed(), (states[again.id].type, states[again.id].message)
    assert _versions(pool) == [*before, [new]]
    assert _logged(pool, again.id, f"{MODEL}: no re-merge ({MODEL} v{new} already has these parents)")
    verified = mergeops(pool, "carol", "log", "verify")
    assert verified.returncode == 0, verified.stderr


def _logged(pool, flow_run_id, line: str, timeout: float = 30) -> bool:
    """Whether the flow run sent ``line`` to the Prefect server (its logs arrive in batches, so a
    line may land just after the run's final state)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    with _client(pool) as client:
        while True:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            if line in (entry.message for entry in logs) or time.monotonic() > deadline:
                return line in (entry.message for entry in logs)
            time.sleep(1)


def _alias(pool, alias: str, name: str = MODEL) -> str:
    ((version,),) = pool["pg"]["sql"]("mlflow", f"SELECT version FROM registered_model_aliases "
                                                f"WHERE name = '{name}' AND alias = '{alias}'")
    return version


def _runs(proc: psutil.Process, flow_run_id) -> bool:
    with contextlib.suppress(psutil.Error):
        return proc.environ().get("PREFECT__FLOW_RUN_ID") == str(flow_run_id)
    return False


def _bare_environment() -> dict[str, str]:
    """A machine of the team's: nothing of mergeops's, MLflow's, Prefect's or S3's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("MERGEOPS_", "MLFLOW_", "PREFECT_", "AWS_"))}


def _credentials() -> dict[str, str]:
    """What a worker's machine holds beside mergeops.yaml: the worker account's and S3's credentials."""
    return {"MLFLOW_TRACKING_USERNAME": WORKER_USER, "MLFLOW_TRACKING_PASSWORD": password(WORKER_USER),
            **S3_CREDENTIALS}


def _as_worker(pool, *args: str) -> subprocess.CompletedProcess:
    """`mergeops ARGS` in the project on a worker's machine (its credentials, settings from mergeops.yaml)."""
    return subprocess.run([str(BIN / "mergeops"), *args], cwd=pool["proj"], capture_output=True, text=True,
                          timeout=300, env={**_bare_environment(), **_credentials()})
