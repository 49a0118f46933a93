"""`mergeops verify` after a parent moved on: the parent's old bytes come back from the artifact
store (a real git + DVC store and its local remote, as the pipeline versions them), by content id.

The tests share one registered version and run in order, each taking more away: the parent is
changed in place (restored from the DVC cache), the cache is deleted (restored from the remote),
the remote's copy is damaged (refused), then deleted (one error line saying what is missing).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows.demo import update_parent
from flows.dvc_store import DvcStore, parent_path
from merge.manifest import content_id, file_entries, sha256_file
from merge.recipe import parse_recipe
from merge.run import run_merge
from registry import mlflow_registry as reg
from registry.keys import load_signing_key
from registry.audit_log import AuditLog
from registry.errors import VerifyMismatch
from registry.lineage import build_lineage
from registry.verify import verify_version

REPO = Path(__file__).resolve().parents[1]
RECIPE = ("merge_method: linear\nname: replay\nseed: 0\nmodels:\n  - model: base\n    parameters: {weight: 0.5}\n"
          "  - model: sort\n    parameters: {weight: 0.5}\n")


@pytest.fixture(scope="module")
def replay(tmp_path_factory, tiny_zoo):
    """replay v1 merged from private copies of base and sort, both versioned in the store and pushed."""
    root = tmp_path_factory.mktemp("replay")
    home, parents = root / "home", root / "parents"
    for model in ("base", "sort"):
        shutil.copytree(tiny_zoo / "models" / model, parents / model)
    # The store and remote where the CLI finds them for MERGEOPS_HOME=home (flows/settings.py).
    store = DvcStore(home / "store", str(home / "dvc-remote")).ensure()
    merged = run_merge(parse_recipe(RECIPE, parents), root / "merged", progress=False)
    store.track({parent_path(p["content_id"]): Path(p["path"]) for p in merged.parents}, "replay parents")
    store.push()
    audit = {"verdict": "pass", "effective_license": "apache-2.0", "obligations": [],
             "parents": [{"path": p["path"], "content_id": p["content_id"], "license": "apache-2.0",
                          "verdict": "pass"} for p in merged.parents]}
    record = build_lineage(name="replay", recipe_text=RECIPE, recipe_sha256=hashlib.sha256(RECIPE.encode()).hexdigest(),
                           recipe_base_dir=parents, merge_manifest={**merged.manifest, "parents": merged.parents},
                           audit_report=audit, requested_by="alice")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    key = load_signing_key(home / "keys" / "signing-key.pem", create=True)  # where the CLI finds it
    info = reg.register_candidate(tracking_uri=uri, name="replay", model_dir=merged.out_dir, lineage=record,
                                  audit_log_path=home / "audit-log.jsonl",
                                  artifact_location=(home / "mlartifacts").as_uri(), signing_key=key)
    sort_id = next(p["content_id"] for p in merged.parents if Path(p["path"]).name == "sort")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MERGEOPS_", "MLFLOW_"))}
    env |= {"MERGEOPS_HOME": str(home), "PYTHONPATH": str(REPO), "TMPDIR": str(root / "tmp")}
    (root / "tmp").mkdir()
    return SimpleNamespace(root=root, home=home, uri=uri, key=key, log=home / "audit-log.jsonl", store=store, info=info,
                           sort=parents / "sort", sort_id=sort_id, merged_id=merged.content_id, env=env,
                           files=len(file_entries(Path(merged.out_dir))),
                           weights=sha256_file(parents / "sort" / "model.safetensors"))


def _verify(replay, restore=None, work: Path | None = None):
    return verify_version(replay.uri, "replay@1", audit_log_path=replay.log, work_dir=work,
                          public_key=replay.key.public, restore=restore or replay.store.restore_parent)


def _cli(replay, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=replay.env, cwd=replay.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _empty(folder: Path) -> bool:
    return not any(folder.iterdir())


def test_unchanged_parents_are_read_where_they_are(replay, tmp_path) -> None:
    result = _verify(replay, work=tmp_path)
    assert result.content_id == replay.merged_id and result.restored == {}
    assert _empty(tmp_path)


def test_a_parent_changed_in_place_is_restored_from_the_store_bit_for_bit(replay) -> None:
    update_parent(replay.sort)
    assert content_id(replay.sort) != replay.sort_id
    proc = _cli(replay, "verify", "replay@1")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.splitlines() == [
        f"parent sort: restored from the store (content {replay.sort_id[:16]})",
        f"replay v1: reproduced bit for bit ({replay.files} files, content {replay.merged_id[:16]})"], out
    assert _empty(replay.root / "tmp")  # the restored copy and the re-merge are gone
    last = AuditLog(replay.log).entries()[-1]
    assert (last["event"], last["data"]["outcome"], last["data"]["restored_from_store"]) == (
        "verified", "reproduced", ["sort"])
    assert reg.get_version(replay.uri, "replay", "1").tag("verify") == "reproduced"


def test_without_the_dvc_cache_the_remote_serves_the_bytes(replay, tmp_path) -> None:
    shutil.rmtree(replay.store.root / ".dvc" / "cache")
    result = _verify(replay, work=tmp_path)
    assert (result.content_id, result.restored) == (replay.merged_id, {"sort": replay.sort_id})
    assert _empty(tmp_path)


def test_ctrl_c_leaves_no_restored_copy_behind(replay) -> None:
    tmp = replay.root / "tmp"
    # As from a terminal: SIGINT handled by default even when these tests run in a background job
    # (whose commands start with SIGINT ignored, and Python keeps an ignored SIGINT ignored).
    proc = _cli(replay, "verify", "replay@1", start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not list(tmp.glob("mergeops-verify-*/parents/*")):  # the restore has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal sends Ctrl-C: to the command and its dvc
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "reproduced" not in out
    assert "Traceback" not in err, err
    assert _empty(tmp), list(tmp.rglob("*"))


def test_restored_bytes_that_do_not_hash_to_the_content_id_are_refused(replay, tmp_path) -> None:
    remote = Path(replay.store.remote_url)
    (weights,) = [p for p in remote.rglob("*") if p.is_file() and sha256_file(p) == replay.weights]
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(VerifyMismatch, match=rf"parent sort \(content {replay.sort_id[:16]}\): the copy restored "
                                             r"from the store hashes to [0-9a-f]{16}, not the recorded content id"):
        _verify(replay, work=tmp_path)
    assert _empty(tmp_path)
    last = AuditLog(replay.log).entries()[-1]
    assert (last["data"]["outcome"], reg.get_version(replay.uri, "replay", "1").tag("verify")) == (
        "mismatch", "mismatch")


def test_a_parent_found_nowhere_is_one_error_line_saying_how_to_restore_it(replay, tmp_path) -> None:
    shutil.rmtree(replay.store.remote_url)
    proc = _cli(replay, "verify", "replay@1")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: parent sort (content {replay.sort_id[:16]}): {replay.sort} now holds "
                           "content "), line
    assert f"neither its DVC cache nor its remote {replay.store.remote_url} holds the bytes" in line
    assert f"or put its recorded bytes back at {replay.sort}" in line
    assert _empty(replay.root / "tmp")

    other = DvcStore(tmp_path / "other-store", str(tmp_path / "other-remote")).ensure()  # never saw sort
    with pytest.raises(VerifyMismatch, match=f"the artifact store {other.root} does not version it"):
        _verify(replay, restore=other.restore_parent, work=tmp_path)
    shutil.rmtree(replay.sort)
    with pytest.raises(VerifyMismatch, match=f"{replay.sort} is gone; the artifact store"):
        _verify(replay, work=tmp_path)
    assert not list(tmp_path.glob("mergeops-verify-*"))
