"""Kills at named points, then a re-run: exactly one good version, a log that verifies, a usable
store; two runs of one recipe at once register one version; temp dirs of dead runs are removed.
Real processes (the `mergeops` CLI), killed with SIGKILL through MERGEOPS_CRASH_AT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from user_models import build_user_project

from flows.cleanup import sweep_dead_temp_dirs
from registry import mlflow_registry as reg

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    proj = build_user_project(root / "project")
    (proj.root / "mergeops.yaml").write_text("suite: suite.yaml\npolicy: policy.yaml\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MERGEOPS_", "MLFLOW_", "PREFECT_API_URL"))}
    env |= {"PYTHONPATH": str(REPO), "PREFECT_HOME": str(root / "prefect")}

    def mergeops(*args: str, crash: str | None = None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], cwd=proj.root, text=True,
                                env=env | ({"MERGEOPS_CRASH_AT": crash} if crash else {}),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def recipe(name: str) -> str:
        path = proj.root / f"{name}.yaml"
        path.write_text(proj.recipe.read_text().replace("name: acme-merge", f"name: {name}"))
        return str(path)

    return proj, mergeops, recipe, f"sqlite:///{proj.root / '.mergeops' / 'mlflow.db'}"


def _done(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=900)
    return proc.returncode, out, err


def _store_is_clean(proj) -> None:
    """Only .dvc files and .gitignores in the store's git, never weights."""
    tracked = subprocess.run(["git", "ls-files"], cwd=proj.root / ".mergeops" / "store", capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked and all(p.endswith((".dvc", ".gitignore")) or p.startswith(".dvc") for p in tracked), tracked


# Each point kills the registration at another step of its journal (registry/journal.py):
# copied into the store, not yet `dvc add`-ed / added, not committed / run logged, no version /
# version created, not journaled / `registered` entry appended, not mirrored into MLflow.
# One point runs in `make test`; every point runs in `make stack-test` (marked heavy: a full pipeline
# run, killed and run again, costs about 40 s each on 2 cores).
@pytest.mark.parametrize("point", [pytest.param("store.copied", marks=pytest.mark.heavy),
                                   pytest.param("store.added", marks=pytest.mark.heavy),
                                   pytest.param("journal.run", marks=pytest.mark.heavy),
                                   "registry.version-created",
                                   pytest.param("log.registered", marks=pytest.mark.heavy)])
def test_a_run_killed_at_a_named_point_is_completed_by_the_next(project, point: str) -> None:
    proj, mergeops, recipe, uri = project
    name = f"crash-{point.replace('.', '-')}"
    rc, _, _ = _done(mergeops("run", recipe(name), "--requested-by", "alice", crash=point))
    assert rc == -signal.SIGKILL
    if point == "registry.version-created":
        assert [v.version for v in reg.list_versions(uri, name)] == ["1"]
        rc, _, err = _done(mergeops("log", "verify"))  # the half-registered version is named
        assert rc == 1 and f"{name} v1" in err, err
    if point == "log.registered":  # logged: the version is governed, only MLflow's copy of the entry is missing
        assert not any(k.startswith("mergeops.log.") for k in reg.get_version(uri, name, "1").tags)

    rc, out, err = _done(mergeops("run", recipe(name), "--requested-by", "alice"))
    assert rc == 0, err
    assert [v.version for v in reg.list_versions(uri, name)] == ["1"]
    info = reg.get_version(uri, name, "1")
    assert "candidate" in info.aliases
    assert any(k.startswith("mergeops.log.") and v.startswith("registered:") for k, v in info.tags.items())
    rc, out, err = _done(mergeops("log", "verify"))
    assert rc == 0 and "chain intact" in out, err
    _store_is_clean(proj)
    assert not list((proj.root / ".mergeops" / "journal").glob("*.json"))  # settled, not left open
    assert mergeops("approve", name, "1", "--reviewer", "bob").wait(timeout=300) == 0


@pytest.mark.heavy
def test_repair_completes_or_rolls_back_registrations_and_mirrors(project) -> None:
    """`mergeops repair` instead of a re-run: a registration killed before its version is rolled
    back (its run deleted), one killed after is completed; an approval and a promotion killed
    between their log entry and MLflow's copy are mirrored; the log then verifies."""
    proj, mergeops, recipe, uri = project
    rc, _, _ = _done(mergeops("run", recipe("rolled"), "--requested-by", "alice", crash="journal.run"))
    assert rc == -signal.SIGKILL
    rc, _, _ = _done(mergeops("run", recipe("fixed"), "--requested-by", "alice", crash="registry.version-created"))
    assert rc == -signal.SIGKILL
    rc, out, err = _done(mergeops("repair"))
    assert rc == 0, err
    assert "rolled: registration rolled back (no version was created; run" in out, out
    assert "fixed v1: registration completed" in out, out
    assert reg.list_versions(uri, "rolled") == [] and "candidate" in reg.get_version(uri, "fixed", "1").aliases
    assert reg.client(uri).search_runs([reg.client(uri).get_experiment_by_name("mergeops").experiment_id],
                                       "tags.`mergeops.model` = 'rolled'") == []  # (deleted runs are not listed)

    rc, _, _ = _done(mergeops("approve", "fixed", "1", "--reviewer", "bob", crash="log.approved"))
    assert rc == -signal.SIGKILL
    rc, _, err = _done(mergeops("log", "verify"))
    assert rc == 1 and "fixed v1: tag mergeops.approval is 'pending', the log says 'approved'" in err, err
    rc, _, err = _done(mergeops("approve", "fixed", "1", "--reviewer", "bob"))  # decided once: the log says so
    assert rc == 1 and "already approved" in err, err
    rc, out, err = _done(mergeops("repair"))
    assert rc == 0 and "fixed v1: tags now show the logged decision (approved by bob)" in out, out + err
    assert reg.get_version(uri, "fixed", "1").tag("approval") == "approved"

    rc, _, _ = _done(mergeops("promote", "fixed", "1", "--by", "carol", crash="log.promoted"))
    assert rc == -signal.SIGKILL
    rc, _, err = _done(mergeops("log", "verify"))
    assert rc == 1 and "alias champion is unset, the log promoted v1" in err, err
    rc, out, err = _done(mergeops("repair"))
    assert rc == 0 and "alias champion moved" in out and "chain intact" in out, out + err
    assert "champion" in reg.get_version(uri, "fixed", "1").aliases
    rc, out, err = _done(mergeops("repair"))  # nothing left: says so
    assert rc == 0 and "nothing was left half done" in out, out + err
    _store_is_clean(proj)


def test_two_runs_of_one_recipe_at_once_register_one_version(project) -> None:
    proj, mergeops, recipe, uri = project
    path = recipe("raced")
    first, second = (mergeops("run", path, "--requested-by", "alice") for _ in range(2))
    results = [_done(first), _done(second)]
    assert [rc for rc, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert [v.version for v in reg.list_versions(uri, "raced")] == ["1"]
    assert sum("raced v1: unchanged" in out for _, out, _ in results) == 1


def test_temp_dirs_of_dead_runs_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f".model.tmp-{dead.pid}", tmp_path / f".register-{dead.pid}-abc"]
    live = [tmp_path / f".model.tmp-{os.getpid()}", tmp_path / "model"]
    for d in stale + live:
        (d / "sub").mkdir(parents=True)
    assert sorted(sweep_dead_temp_dirs(tmp_path)) == sorted(stale)
    assert all(d.exists() for d in live) and not any(d.exists() for d in stale)


def test_a_registration_is_abandoned_only_once_its_owner_is_gone(tmp_path: Path) -> None:
    """The journal's liveness is its owner's lock: held while the process lives, free once killed."""
    from registry import journal

    log = tmp_path / "audit-log.jsonl"
    owner = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from registry import journal; "
        f"r = journal.begin(Path({str(log)!r}), 'm', 'c' * 64); r.advance('artifacts', dvc_revision='abc'); "
        "print('ready', flush=True); time.sleep(600)")], cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "ready"
        assert journal.abandoned(log) == []  # alive: a registration in progress, not to be touched
    finally:
        owner.kill()
        owner.wait()
    (found,) = journal.abandoned(log)
    assert (found.facts["model"], found.state, found.facts["dvc_revision"]) == ("m", "artifacts", "abc")
    assert journal.abandoned(log) == []  # this process holds it now
    found.done()
    assert journal.abandoned(log) == [] and list(journal.journal_dir(log).iterdir()) == []


def test_a_merge_killed_mid_way_leaves_a_temp_dir_the_next_merge_removes(tmp_path: Path) -> None:
    from merge.synthetic import write_llama

    base = write_llama(tmp_path / "base", seed=0, layers=2)
    write_llama(tmp_path / "a", seed=1, base=base, layers=2)
    (tmp_path / "r.yaml").write_text("merge_method: linear\nmodels:\n  - {model: base, parameters: {weight: 0.5}}\n"
                                     "  - {model: a, parameters: {weight: 0.5}}\n")
    env = os.environ | {"PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "flows.cli", "merge", "r.yaml", "--out", "out"]
    killed = subprocess.run(cmd, cwd=tmp_path, env=env | {"MERGEOPS_CRASH_AT": "merge.tensor-fed"}, capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    assert len(list(tmp_path.glob(".out.tmp-*"))) == 1  # what the kill left (named with the dead pid)
    assert not (tmp_path / "out").exists()
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "mergeops.manifest.json").is_file() and not list(tmp_path.glob(".out.tmp-*"))
