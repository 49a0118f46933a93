"""The DVC store against real git and dvc executables in a temporary repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.dvc_store import DvcStore, lock_md5s, parent_path
from flows.errors import StoreError
from registry.errors import ParentUnavailable

DVC = str(Path(sys.executable).with_name("dvc"))


@pytest.fixture()
def artifact(tmp_path: Path) -> Path:
    model = tmp_path / "src" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"a": 1}')
    (model / "weights.bin").write_bytes(bytes(range(256)) * 4)
    return model


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def test_track_commits_md5s_and_push_fills_the_remote(tmp_path: Path, artifact: Path) -> None:
    remote = tmp_path / "remote"
    store = DvcStore(tmp_path / "store", str(remote)).ensure()
    report = tmp_path / "src" / "report.json"
    report.write_text('{"ok": true}')

    md5s, revision = store.track({"models/abc": artifact, "reports/abc.json": report}, "version abc")

    assert md5s["models/abc"].endswith(".dir")
    assert len(md5s["reports/abc.json"]) == 32
    assert revision == _git(store.root, "rev-parse", "HEAD").strip()
    assert "models/abc.dvc" in _git(store.root, "ls-files")
    assert "models/abc/config.json" not in _git(store.root, "ls-files")  # the bytes live in DVC
    store.push()
    pushed = {p.name for p in remote.rglob("*") if p.is_file()}
    assert md5s["reports/abc.json"][2:] in pushed


def test_tracking_the_same_content_again_changes_nothing(tmp_path: Path, artifact: Path) -> None:
    store = DvcStore(tmp_path / "store", str(tmp_path / "remote")).ensure()
    first, rev1 = store.track({"models/abc": artifact}, "v1")
    second, rev2 = store.track({"models/abc": artifact}, "v1 again")
    assert first == second
    assert rev1 == rev2
    assert DvcStore(tmp_path / "store", str(tmp_path / "remote")).ensure().revision() == rev1


def test_dvc_lock_records_the_same_md5_as_the_store(tmp_path: Path, artifact: Path) -> None:
    """`dvc repro` of a stage producing the same bytes records the md5 the lineage holds."""
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "-q")
    subprocess.run([DVC, "init", "-q"], cwd=repo, check=True)
    stage = {"stages": {"merge": {"cmd": f"cp -r {artifact} out/model", "outs": ["out/model"]}}}
    (repo / "out").mkdir()
    (repo / "dvc.yaml").write_text(yaml.safe_dump(stage))
    subprocess.run([DVC, "repro", "-q"], cwd=repo, check=True)

    store = DvcStore(tmp_path / "store", str(tmp_path / "remote")).ensure()
    md5s, _ = store.track({"models/abc": artifact}, "v1")
    assert lock_md5s(repo) == {"merge": {"out/model": md5s["models/abc"]}}
    assert lock_md5s(tmp_path / "nowhere") == {}


def test_a_failing_dvc_call_is_a_typed_one_line_error(tmp_path: Path, artifact: Path) -> None:
    store = DvcStore(tmp_path / "store", str(tmp_path / "remote")).ensure()
    with pytest.raises(StoreError, match="inside"):
        store.track({"../escape": artifact}, "outside the repo")
    assert not (tmp_path / "escape").exists()
    (store.root / ".dvc" / "config").write_text("[core\nbroken")
    with pytest.raises(StoreError, match="dvc add"):
        store.track({"models/abc": artifact}, "v1")


def test_raw_files_left_by_a_killed_run_are_versioned_afresh_never_committed_to_git(tmp_path: Path,
                                                                                   artifact: Path) -> None:
    store = DvcStore(tmp_path / "store", str(tmp_path / "remote")).ensure()
    assert "analytics = false" in (store.root / ".dvc" / "config").read_text()
    # a run killed after its copy, before `dvc add`: the raw model sits in the store, untracked
    shutil.copytree(artifact, store.root / "models" / "abc")
    (store.root / "models" / ".junk.tmp").mkdir()
    md5s, rev = store.track({"reports/r1.json": artifact / "config.json"}, "another run")  # commits only its own
    tracked = _git(store.root, "ls-files").split()
    assert not any(p.startswith("models/") for p in tracked), tracked
    # the next run of that model recovers: the leftover is replaced and versioned by DVC
    md5s, rev = store.track({"models/abc": artifact}, "v1")
    tracked = _git(store.root, "ls-files").split()
    assert "models/abc.dvc" in tracked and not any(p.startswith("models/abc/") for p in tracked)


def test_a_store_that_committed_raw_weights_to_git_recovers(tmp_path: Path, artifact: Path) -> None:
    store = DvcStore(tmp_path / "store", str(tmp_path / "remote")).ensure()
    shutil.copytree(artifact, store.root / "models" / "abc")  # as an older store's `git add -A` did
    _git(store.root, "add", "-A")
    _git(store.root, "-c", "user.name=x", "-c", "user.email=x@y", "commit", "-q", "-m", "wedged")
    md5s, _ = store.track({"models/abc": artifact}, "v1")
    tracked = _git(store.root, "ls-files").split()
    assert "models/abc.dvc" in tracked and not any(p.startswith("models/abc/") for p in tracked)
    assert md5s["models/abc"].endswith(".dir")


def test_restore_gives_the_committed_bytes_from_the_cache_else_the_remote(tmp_path: Path, artifact: Path) -> None:
    store = DvcStore(tmp_path / "store", str(tmp_path / "remote")).ensure()
    store.track({parent_path("abc"): artifact}, "a parent")
    store.push()
    (store.root / "parents" / "abc" / "config.json").write_text('{"edited": "in the working copy"}')
    store.restore_parent("abc", tmp_path / "from-cache")  # by md5, never the edited working copy
    assert (tmp_path / "from-cache" / "config.json").read_text() == '{"a": 1}'
    shutil.rmtree(store.root / ".dvc" / "cache")
    store.restore_parent("abc", tmp_path / "from-remote")
    assert (tmp_path / "from-remote" / "weights.bin").read_bytes() == (artifact / "weights.bin").read_bytes()
    with pytest.raises(ParentUnavailable, match=f"{store.root} does not version it"):
        store.restore_parent("def", tmp_path / "unknown")
    shutil.rmtree(tmp_path / "remote")
    with pytest.raises(ParentUnavailable, match="neither its DVC cache nor its remote .* holds the bytes "
                                                r"\(dvc get: ERROR: .*No storage files available"):
        store.restore_parent("abc", tmp_path / "nowhere")
    assert not DvcStore(tmp_path / "no-store", str(tmp_path / "remote")).versions(parent_path("abc"))
