"""The artifact store's DVC remote on S3 (moto's server on loopback), set in mergeops.yaml.

A pipeline run (evaluation fanned out over a local Dask cluster of two workers) registers a version
and pushes its parents and merged model to the bucket; a fresh clone of the store repo pulls them
back byte for byte; `mergeops verify` restores a parent that moved on from the bucket once the
local DVC cache is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from servers import BIN, OPEN_POLICY, s3_server  # noqa: E402

from merge.manifest import content_id  # noqa: E402

RECIPE = """\
name: s3-stored
merge_method: linear
seed: 0
models:
  - model: parents/base
    parameters: {weight: 0.5}
  - model: parents/sort
    parameters: {weight: 0.5}
dtype: float32
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_zoo):
    root = tmp_path_factory.mktemp("dvc-s3")
    with s3_server(root / "logs") as s3:
        proj = root / "project"
        for model in ("base", "sort"):
            shutil.copytree(tiny_zoo / "models" / model, proj / "parents" / model)
        (proj / "recipe.yaml").write_text(RECIPE)
        (proj / "policy.yaml").write_text(OPEN_POLICY)
        (proj / "mergeops.yaml").write_text(f"policy: policy.yaml\nzoo: {tiny_zoo}\n"
                                            f"dvc_remote: s3://{s3['bucket']}/dvc\nevaluation_workers: 2\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MERGEOPS_", "MLFLOW_", "PREFECT_API_URL",
                                                                        "AWS_"))}
        env |= {**s3["env"], "MERGEOPS_DVC_REMOTE_ENDPOINT": s3["endpoint"], "PREFECT_HOME": str(root / "prefect")}

        def mergeops(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([str(BIN / "mergeops"), *args], cwd=proj, env=env, capture_output=True, text=True,
                                  timeout=900)

        ran = mergeops("run", "recipe.yaml", "--requested-by", "alice")
        assert ran.returncode == 0, ran.stderr[-3000:]
        yield {"root": root, "proj": proj, "s3": s3, "env": env, "mergeops": mergeops, "run": ran}


def _lineage(project) -> dict:
    shown = project["mergeops"]("lineage", "s3-stored@1", "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def test_the_run_fanned_out_and_pushed_to_the_bucket(project):
    lineage = _lineage(project)
    s3 = project["s3"]
    keys = [o["Key"] for page in s3["client"].get_paginator("list_objects_v2").paginate(
        Bucket=s3["bucket"], Prefix="dvc/") for o in page.get("Contents", [])]
    md5s = set(lineage["dvc"]["md5s"].values())
    assert keys and all(k.startswith("dvc/files/md5/") for k in keys), keys
    # every directory DVC versioned has its listing (<md5>.dir) in the bucket
    dirs = {m for m in md5s if m.endswith(".dir")}
    assert dirs and all(any(k.endswith(m[:2] + "/" + m[2:]) for k in keys) for m in dirs), (dirs, keys)
    assert not (project["proj"] / ".mergeops" / "dvc-remote").exists()  # nothing went to the local default
    store_config = (project["proj"] / ".mergeops" / "store" / ".dvc" / "config").read_text()
    assert "analytics = false" in store_config and f"endpointurl = {s3['endpoint']}" in store_config


def test_a_fresh_clone_pulls_parents_and_model_byte_for_byte(project):
    lineage = _lineage(project)
    clone = project["root"] / "clone"
    subprocess.run(["git", "clone", "-q", str(project["proj"] / ".mergeops" / "store"), str(clone)], check=True)
    pulled = subprocess.run([str(BIN / "dvc"), "pull", "-q"], cwd=clone, env={**project["env"], "DVC_NO_ANALYTICS": "1"},
                            capture_output=True, text=True, timeout=600)
    assert pulled.returncode == 0, pulled.stderr
    parents = [p["content_id"] for p in lineage["parents"]]
    merged = lineage["merged"]["content_id"]
    assert len(parents) == 2
    for cid in parents:
        assert content_id(clone / "parents" / cid) == cid
    assert content_id(clone / "models" / merged) == merged
    for cid, name in zip(parents, ("base", "sort")):  # the same bytes as the parents the run read
        for f in (project["proj"] / "parents" / name).rglob("*"):
            if f.is_file():
                assert (clone / "parents" / cid / f.relative_to(project["proj"] / "parents" / name)).read_bytes() \
                    == f.read_bytes()


def test_verify_restores_a_moved_parent_from_the_bucket(project):
    from flows.demo import update_parent

    lineage = _lineage(project)
    sort = project["proj"] / "parents" / "sort"
    old = content_id(sort)
    assert old in [p["content_id"] for p in lineage["parents"]]
    shutil.rmtree(project["proj"] / ".mergeops" / "store" / ".dvc" / "cache")  # only the bucket holds it now
    update_parent(sort)
    assert content_id(sort) != old
    verified = project["mergeops"]("verify", "s3-stored@1")
    assert verified.returncode == 0, verified.stderr
    assert f"restored from the store (content {old[:16]})" in verified.stdout
    assert "reproduced bit for bit" in verified.stdout
