"""A user's own models, suite and settings through the whole governed pipeline, as a user runs it:
the `mergeops` command in a project folder with a mergeops.yaml and no zoo anywhere, the base
model named by repo id from a local Hugging Face cache.

run → candidate; approve by another user → promote → lineage → verify → log verify; a parent is
updated and `watch --once` (settings from mergeops.yaml) makes exactly one new candidate; a second
pass makes none; v1 still verifies, its old parent restored from the DVC store; a re-merge that a
gate stops exits 1 with one error line.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_hub_refs import mirror
from user_models import build_user_project

from registry import mlflow_registry as reg

# Each test carries on from the one before (v1 approved, then the parent update's v2): one module,
# run whole by `make stack-test` (a full pipeline on real models takes minutes).
pytestmark = pytest.mark.heavy

REPO = Path(__file__).resolve().parents[1]
BASE_REPO, BASE_COMMIT = "acme/qwen-base", "5eed" * 10


def _nudge(model_dir: Path) -> None:
    """A new revision of a parent: one weight moved by 1e-6, re-saved in place."""
    from flows.demo import update_parent

    update_parent(model_dir)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("acme")
    proj = build_user_project(root / "project")
    # The base comes from the local Hugging Face cache, by repo id; the fine-tunes by relative path,
    # which starts at the project root whichever subfolder a command runs in.
    mirror(proj.base, root / "hf-cache", BASE_REPO, BASE_COMMIT)
    proj.recipe.write_text(proj.recipe.read_text().replace(f"{proj.base}", f"{BASE_REPO}@main")
                           .replace(f"{proj.root}/", ""))
    (proj.root / "mergeops.yaml").write_text(
        "home: .mergeops\nsuite: suite.yaml\npolicy: policy.yaml\nwatch:\n  - recipe: recipe.yaml\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MERGEOPS_", "MLFLOW_", "PREFECT_API_URL"))}
    # Every process (the CLI, Prefect's server, dvc) runs behind a guard that refuses and records any
    # connection or name lookup beyond loopback: telemetry, analytics and hub calls included.
    env |= {"PYTHONPATH": f"{REPO / 'tests' / 'netguard'}:{REPO}", "MERGEOPS_NETGUARD_LOG": str(root / "net.log"),
            "PREFECT_HOME": str(root / "prefect"), "HF_HUB_CACHE": str(root / "hf-cache")}

    def mergeops(*args: str, cwd: Path = proj.root / "models") -> subprocess.CompletedProcess:
        # from a subfolder: the config is found upward, as git finds .git
        return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=900)

    return proj, mergeops


def _clean(proc: subprocess.CompletedProcess) -> None:
    noise = ("Traceback", "fatal: not a git repository", "telemetry", "Finished in state")
    for text in noise:
        assert text not in proc.stderr, proc.stderr


def test_own_models_run_to_an_approved_champion_and_replay(project) -> None:
    proj, mergeops = project
    assert not list(proj.root.rglob("zoo.json"))
    name = yaml.safe_load(proj.recipe.read_text())["name"]

    bad = mergeops("run", str(proj.recipe), "--suite", "missing.yaml")  # read before anything is merged
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [line for line in bad.stderr.strip().splitlines()
                                               if line.startswith("error:")] and "missing.yaml" in bad.stderr
    assert not (proj.root / ".mergeops" / "mlflow.db").exists()

    run = mergeops("run", str(proj.recipe), "--requested-by", "alice")
    assert run.returncode == 0, run.stderr
    _clean(run)
    assert f"{name} v1: awaiting approval" in run.stdout
    assert (proj.root / ".mergeops" / "mlflow.db").is_file()  # the store beside mergeops.yaml

    assert mergeops("approve", name, "1", "--reviewer", "alice").returncode == 1  # four-eyes
    assert mergeops("approve", name, "1", "--reviewer", "bob", "--comment", "ok").returncode == 0
    promoted = mergeops("promote", name, "1", "--by", "carol")
    assert promoted.returncode == 0, promoted.stderr

    shown = mergeops("lineage", f"{name}@champion", "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["suite"]["sha256"] == hashlib.sha256(proj.suite.read_bytes()).hexdigest()
    assert record["policy"]["sha256"] == hashlib.sha256(proj.policy.read_bytes()).hexdigest()
    assert record["suite"]["source"] == str(proj.suite) and record["policy"]["source"] == str(proj.policy)
    assert sorted(record["evaluation"]["scores"]) == sorted(proj.eval_data)
    assert [f["path"] for f in record["release_files"]] == ["README.md", "LICENSE", "NOTICE"]
    (base,) = [p for p in record["parents"] if p.get("repo_id")]
    assert (base["reference"], base["repo_id"], base["commit"]) == (f"{BASE_REPO}@main", BASE_REPO, BASE_COMMIT)

    tree = mergeops("lineage", name)
    assert tree.returncode == 0 and "qwen-capitals" in tree.stdout
    assert f"policy  policy.yaml  sha256 {record['policy']['sha256'][:16]}" in tree.stdout

    verified = mergeops("verify", f"{name}@1")
    assert verified.returncode == 0, verified.stderr
    assert "reproduced bit for bit" in verified.stdout
    logged = mergeops("log", "verify")
    assert logged.returncode == 0, logged.stderr
    assert "chain intact" in logged.stdout

    # What reached MLflow: the plots, the suite and policy, and a model dir with card and licence.
    uri = f"sqlite:///{proj.root / '.mergeops' / 'mlflow.db'}"
    info = reg.resolve(uri, f"{name}@champion")
    c = reg.client(uri)
    paths = {a.path for folder in ("evaluation", "settings", "model") for a in c.list_artifacts(info.run_id, folder)}
    assert {"evaluation/evaluation.bars.png", "evaluation/evaluation.heatmap.png", "settings/suite.yaml",
            "settings/policy.yaml", "model/README.md", "model/LICENSE", "model/NOTICE"} <= paths
    assert info.tag("policy_sha256") == record["policy"]["sha256"]
    assert info.tag("suite_sha256") == record["suite"]["sha256"]
    card = reg.download(uri, info, "model", proj.root / "downloaded")
    front = yaml.safe_load((card / "README.md").read_text().split("---")[1])
    assert front["license"] == "apache-2.0" and front["base_model_relation"] == "merge"
    assert front["base_model"] == [BASE_REPO, "qwen-capitals", "qwen-plurals"]  # no local paths on a card
    assert "Effective licence: apache-2.0" in (card / "LICENSE").read_text()


def test_a_parent_update_makes_exactly_one_candidate_and_a_stopped_remerge_exits_1(project) -> None:
    proj, mergeops = project
    name = yaml.safe_load(proj.recipe.read_text())["name"]
    _nudge(proj.finetune_plain)

    first = mergeops("watch", "--once")
    assert first.returncode == 0, first.stderr
    _clean(first)
    assert f"{name}: re-merged" in first.stdout and f"{name} v2: awaiting approval" in first.stdout
    again = mergeops("watch", "--once")
    assert again.returncode == 0 and f"{name}: unchanged" in again.stdout
    # v1's parent has moved on: verify takes its recorded bytes back from the DVC store
    replayed = mergeops("verify", f"{name}@1")
    assert replayed.returncode == 0, replayed.stderr
    restored, done = replayed.stdout.splitlines()
    assert restored.startswith(f"parent models/{proj.finetune_plain.name}: restored from the store (content ")
    assert done.startswith(f"{name} v1: reproduced bit for bit")
    uri = f"sqlite:///{proj.root / '.mergeops' / 'mlflow.db'}"
    assert [v.version for v in reg.list_versions(uri, name)] == ["1", "2"]

    # A policy no model can pass: the re-merge is stopped, nothing is registered, exit 1.
    strict = proj.root / "strict.yaml"
    strict.write_text("domain_minimums: {default: 1.01}\n")
    config = proj.root / "mergeops.yaml"
    config.write_text(config.read_text().replace("  - recipe: recipe.yaml", "  - {recipe: recipe.yaml, policy: strict.yaml}"))
    _nudge(proj.finetune_plain)
    stopped = mergeops("watch", "--once")
    assert stopped.returncode == 1
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "re-merge stopped" in errors[0] and "< minimum 1.01" in errors[0], stopped.stderr
    assert stopped.stderr.count("re-merge stopped") == 1, stopped.stderr  # said once, not again by Prefect
    _clean(stopped)
    assert [v.version for v in reg.list_versions(uri, name)] == ["1", "2"]


def test_no_command_reached_beyond_loopback(project) -> None:
    proj, _ = project
    log = proj.root.parent / "net.log"
    assert not log.exists(), f"connections beyond loopback:\n{log.read_text()}"
    # and the guard does catch one: a lookup of a real host name from a guarded process
    probe = subprocess.run([sys.executable, "-c", "import socket; socket.getaddrinfo('pypi.org', 443)"],
                           env={**os.environ, "PYTHONPATH": str(REPO / "tests" / "netguard"),
                                "MERGEOPS_NETGUARD_LOG": str(proj.root.parent / "probe.log")}, capture_output=True)
    assert probe.returncode != 0 and "lookup pypi.org" in (proj.root.parent / "probe.log").read_text()
