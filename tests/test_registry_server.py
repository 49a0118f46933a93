"""Integration: the same registry code against a real `mlflow server` on loopback.

Artifacts go through the server's proxy (``--artifacts-destination``), as they would to S3 at
scale, so promotion's re-hash really downloads over HTTP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_lineage import make_lineage

from registry import approvals
from registry import mlflow_registry as reg
from registry.audit_log import AuditLog
from registry.errors import ApprovalRefused, ArtifactMismatch
from registry.keys import load_signing_key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # no background job runner: it is a second heavy process the registry never uses
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield {"uri": uri, "artifacts": root / "artifacts", "log": root / "audit-log.jsonl",
               "key": load_signing_key(root / "keys" / "signing-key.pem", create=True)}  # the log's own key
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_register_approve_promote_through_a_server(server, tmp_path):
    record, merged = make_lineage(tmp_path / "a")
    info = reg.register_candidate(tracking_uri=server["uri"], name="served", model_dir=merged, lineage=record,
                                  audit_log_path=server["log"], signing_key=server["key"])
    assert info.source.startswith("mlflow-artifacts:/") and info.aliases == ("candidate",)
    assert reg.resolve(server["uri"], "served@candidate").tag("content_id") == record.merged.content_id
    loaded = reg.load_lineage(server["uri"], info)
    assert loaded.model_copy(update={"release_files": []}) == record and len(loaded.release_files) == 3

    with pytest.raises(ApprovalRefused, match="four-eyes"):
        approvals.approve(server["uri"], "served", info.version, reviewer="alice", audit_log_path=server["log"])
    approvals.approve(server["uri"], "served", info.version, reviewer="bob", audit_log_path=server["log"])
    promoted = approvals.promote(server["uri"], "served", info.version, by="carol", audit_log_path=server["log"],
                                 public_key=server["key"].public)
    assert "champion" in promoted.aliases
    assert reg.verify_audit_log(server["uri"], server["log"]) == (3, 3)

    # a second version whose stored weights are edited on the artifact store is not promotable
    record2, merged2 = make_lineage(tmp_path / "b", merged_seed=4)
    v2 = reg.register_candidate(tracking_uri=server["uri"], name="served", model_dir=merged2, lineage=record2,
                                audit_log_path=server["log"], signing_key=server["key"])
    approvals.approve(server["uri"], "served", v2.version, reviewer="bob", audit_log_path=server["log"])
    [weights] = [p for p in server["artifacts"].rglob("model.safetensors") if v2.run_id in str(p)]
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactMismatch, match="changed: model.safetensors"):
        approvals.promote(server["uri"], "served", v2.version, by="carol", audit_log_path=server["log"],
                          public_key=server["key"].public)
    assert reg.resolve(server["uri"], "served").version == info.version  # the champion did not move
    assert [e["event"] for e in AuditLog(server["log"]).entries()] == [
        "registered", "approved", "promoted", "registered", "approved"]
