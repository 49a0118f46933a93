"""The watch's plain parts: which recipes it watches, how it is served, its lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from flows.errors import WatchConfigError
from flows.watch import PARENT_UPDATED, deployment, recipe_lock, watched_recipes


def test_watched_recipes_come_from_options_or_params_yaml(tmp_path: Path) -> None:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "a.yaml").write_text("merge_method: linear\n")
    params = tmp_path / "params.yaml"
    params.write_text("watch:\n  - recipes/a.yaml\n")
    assert watched_recipes(None, params) == [str(tmp_path / "recipes" / "a.yaml")]
    assert watched_recipes(["x.yaml"], params) == [str(Path("x.yaml").resolve())]
    params.write_text("zoo: {profile: demo}\n")
    with pytest.raises(WatchConfigError, match="--recipe"):
        watched_recipes(None, params)


def test_the_served_watch_has_a_cron_schedule_and_a_parent_updated_trigger(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("merge_method: linear\n")
    dep = deployment([str(recipe)], None, cron="*/5 * * * *")
    assert [s.schedule.cron for s in dep.schedules] == ["*/5 * * * *"]
    (trigger,) = dep.triggers
    assert trigger.expect == {PARENT_UPDATED}
    assert trigger.parameters == {"recipes": [str(recipe)], "policy_path": None, "suite": "zoo", "zoo_dir": None}


def test_the_recipe_lock_admits_one_watch_at_a_time(tmp_path: Path) -> None:
    inside, overlaps = [], []

    def hold() -> None:
        with recipe_lock(tmp_path, "demo"):
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
