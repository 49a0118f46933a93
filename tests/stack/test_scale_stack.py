"""The same code at scale: MLflow on PostgreSQL (its auth database too) with its artifacts on S3, the
governance service beside it, and DVC's remote on S3. Every server is real and runs on loopback.

A version registered through the service is approved by another person, promoted, and the log
verifies; the rows are in PostgreSQL and the weights in the bucket, not on a local disk.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import psutil
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from servers import governance_service, mergeops, mlflow_basic_auth, postgres, register, s3_server  # noqa: E402

from registry import mlflow_registry as reg  # noqa: E402
from registry.audit_log import AuditLog  # noqa: E402


@pytest.fixture(scope="module")
def scale(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    with contextlib.ExitStack() as servers:
        pg = servers.enter_context(postgres(root / "logs"))
        s3 = servers.enter_context(s3_server(root / "logs"))
        mlflow = servers.enter_context(mlflow_basic_auth(
            root / "mlflow", backend=pg["createdb"]("mlflow"), auth_db=pg["createdb"]("mlflow_auth"),
            artifacts=f"s3://{s3['bucket']}/mlflow", env=s3["env"]))
        svc = servers.enter_context(governance_service(mlflow["uri"], root / "service"))
        yield {**mlflow, **svc, "tmp": root, "pg": pg, "s3": s3}


def _listening(pid: int) -> set[str]:
    """The addresses the process ``pid`` and its children listen on."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return {c.laddr.ip for p in procs for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}


def test_every_server_listens_on_loopback_only(scale):
    ports = {int(url.rsplit(":", 1)[1]) for url in (scale["uri"], scale["url"], scale["s3"]["endpoint"])}
    ports.add(scale["pg"]["port"])
    listeners = [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.laddr.port in ports]
    assert {c.laddr.port for c in listeners} == ports
    assert {c.laddr.ip for c in listeners} == {"127.0.0.1"}


def test_register_approve_promote_on_postgres_and_s3(scale, monkeypatch):
    version = register(scale, "scale-governed", 7, monkeypatch=monkeypatch)
    assert mergeops(scale, "alice", "approve", "scale-governed", version).returncode == 1  # four-eyes
    approved = mergeops(scale, "bob", "approve", "scale-governed", version, "--comment", "reviewed")
    assert approved.returncode == 0, approved.stderr
    promoted = mergeops(scale, "carol", "promote", "scale-governed", version)
    assert promoted.returncode == 0, promoted.stderr
    verified = mergeops(scale, "carol", "log", "verify")
    assert verified.returncode == 0, verified.stderr

    events = [(e["event"], e["actor"]) for e in AuditLog(scale["log"]).entries()
              if e["data"].get("model") == "scale-governed"]
    assert events == [("registered", "alice"), ("approved", "bob"), ("promoted", "carol")]
    info = reg.get_version(scale["uri"], "scale-governed", version)
    assert "champion" in info.aliases
    # the registry's rows are in PostgreSQL ...
    rows = scale["pg"]["sql"]("mlflow", "SELECT version, run_id FROM model_versions WHERE name = 'scale-governed'")
    assert rows == [[version, info.run_id]]
    assert ["alice"] in scale["pg"]["sql"]("mlflow_auth", "SELECT username FROM users")
    # ... and its weights in the bucket, under the run, readable back through the server
    s3 = scale["s3"]
    keys = [o["Key"] for page in s3["client"].get_paginator("list_objects_v2").paginate(
        Bucket=s3["bucket"], Prefix="mlflow/") for o in page.get("Contents", [])]
    assert any(info.run_id in k and k.endswith("model/model.safetensors") for k in keys), keys
    assert not (scale["root"] / "artifacts").exists()
    shown = mergeops(scale, "carol", "lineage", f"scale-governed@champion", "--json")
    assert shown.returncode == 0 and info.tag("content_id") in shown.stdout, shown.stderr
