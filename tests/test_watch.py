"""The watch's plain parts: which recipes it watches, how it is served, its lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from flows.errors import WatchConfigError
from flows.locks import model_lock
from flows.watch import PARENT_UPDATED, deployment, watched


def test_watched_recipes_come_from_options_or_mergeops_yaml(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "a.yaml").write_text("merge_method: linear\n")
    (tmp_path / "recipes" / "b.yaml").write_text("merge_method: linear\n")
    (tmp_path / "p.yaml").write_text("retention_minimums: {default: 0.4}\n")
    (tmp_path / "strict.yaml").write_text("retention_minimums: {default: 0.9}\n")
    (tmp_path / "mergeops.yaml").write_text(
        "suite: suite.yaml\npolicy: p.yaml\nwatch:\n  - recipes/a.yaml\n"
        "  - {recipe: recipes/b.yaml, policy: strict.yaml, requested_by: bot}\n")
    sub = tmp_path / "recipes"
    monkeypatch.chdir(sub)  # found upward, as git finds .git; paths resolve against the config's folder
    monkeypatch.delenv("MERGEOPS_CONFIG", raising=False)
    monkeypatch.delenv("MERGEOPS_HOME", raising=False)
    a, b = watched()
    assert (a.recipe, a.policy, a.suite, a.requested_by) == (
        str(tmp_path / "recipes" / "a.yaml"), str(tmp_path / "p.yaml"), str(tmp_path / "suite.yaml"), "mergeops-watch")
    assert (b.recipe, b.policy, b.requested_by) == (str(tmp_path / "recipes" / "b.yaml"), str(tmp_path / "strict.yaml"),
                                                   "bot")
    # an option wins over the config, for every recipe
    (only,) = watched(["a.yaml"], policy="/x/policy.yaml")
    assert (only.recipe, only.policy, only.suite) == (str(sub / "a.yaml"), "/x/policy.yaml", str(tmp_path / "suite.yaml"))
    # with a governance service an unnamed requester is left to the signed-in account (a named one stays)
    monkeypatch.setenv("MERGEOPS_SERVICE_URL", "http://127.0.0.1:9")
    a, b = watched()
    assert (a.requested_by, b.requested_by) == (None, "bot")
    monkeypatch.delenv("MERGEOPS_SERVICE_URL")
    (tmp_path / "mergeops.yaml").write_text("suite: zoo\n")
    with pytest.raises(WatchConfigError, match="--recipe"):
        watched()
    (tmp_path / "mergeops.yaml").write_text("watch: [recipes/gone.yaml]\n")
    with pytest.raises(WatchConfigError, match="gone.yaml: watched recipe not found"):
        watched()


def test_the_served_watch_has_a_cron_schedule_and_a_parent_updated_trigger(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("merge_method: linear\n")
    dep = deployment([str(recipe)], None, cron="*/5 * * * *")
    assert [s.schedule.cron for s in dep.schedules] == ["*/5 * * * *"]
    (trigger,) = dep.triggers
    assert trigger.expect == {PARENT_UPDATED}
    assert trigger.parameters == {"recipes": [str(recipe)], "policy_path": None, "suite": None, "zoo_dir": None}


def test_the_recipe_lock_admits_one_watch_at_a_time(tmp_path: Path) -> None:
    inside, overlaps = [], []

    def hold() -> None:
        with model_lock(tmp_path, "demo"):
            if inside:
                overlaps.append(True)
            inside.append(True)
            time.sleep(0.2)
            inside.pop()

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    assert (tmp_path / "locks" / "watch-demo.lock").exists()


def test_the_lock_is_reentrant_in_one_thread_and_exclusive_across_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    probe = ("import fcntl,sys; fh=open(sys.argv[1],'a')\n"
             "try: fcntl.flock(fh, fcntl.LOCK_EX|fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError: print('held')")
    lock_file = tmp_path / "locks" / "watch-demo.lock"
    with model_lock(tmp_path, "demo"):
        with model_lock(tmp_path, "demo"):  # the pipeline inside a watch takes it again
            pass
        out = subprocess.run([sys.executable, "-c", probe, str(lock_file)], capture_output=True, text=True).stdout
        assert out.strip() == "held"  # still held after the inner release
    out = subprocess.run([sys.executable, "-c", probe, str(lock_file)], capture_output=True, text=True).stdout
    assert out.strip() == "free"
