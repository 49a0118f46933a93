"""Real servers on loopback for the stack suite: an authenticated MLflow server and the governance
service, each a subprocess in its own session, stopped with its process group."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
ADMIN = ("admin", "admin-password-1234")
PEOPLE = ("alice", "bob", "carol", "mergeops-svc")


def password(user: str) -> str:
    return f"{user}-password-1234"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def as_user(user: str, **extra: str) -> dict[str, str]:
    """The environment of a command run by ``user`` (MLflow basic-auth credentials)."""
    pw = ADMIN[1] if user == ADMIN[0] else password(user)
    return {**os.environ, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": pw, **extra}


@contextlib.contextmanager
def mlflow_basic_auth(root: Path):
    """``mlflow server --app-name basic-auth`` with default READ, and the people of PEOPLE."""
    root.mkdir(parents=True, exist_ok=True)
    ini = root / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root / 'auth.db'}\n"
                   f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   # each request re-derives the password hash otherwise (about a second on 2 busy cores)
                   "auth_cache_ttl_seconds = 300\n")
    port = free_port()
    log = root / "mlflow.log"
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "stack-test-secret",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--backend-store-uri",
             f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{uri}/health", proc, log)
        for user in PEOPLE:
            _admin_call(uri, "/api/2.0/mlflow/users/create", {"username": user, "password": password(user)})
        yield {"uri": uri, "root": root, "artifacts": root / "artifacts"}
    finally:
        stop(proc)


def _admin_call(uri: str, path: str, body: dict) -> dict:
    import base64

    req = urllib.request.Request(uri + path, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"{}")


@contextlib.contextmanager
def governance_service(mlflow_uri: str, home: Path):
    """``mergeops serve`` as the service account, its home (audit log, signing key) under ``home``."""
    port = free_port()
    log = home.parent / "service.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "mergeops"), "serve", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
            env=as_user("mergeops-svc", MLFLOW_TRACKING_URI=mlflow_uri, MERGEOPS_HOME=str(home)))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/v1/health", proc, log, timeout=60)
        yield {"url": url, "home": home, "log": home / "audit-log.jsonl", "public_key": home / "keys" / "signing-key.pem.pub",
               "service_log": log}
    finally:
        stop(proc)


def decide(args: tuple[str, str, str, str, str]) -> str:
    """One person's decision sent to the service (a process-pool worker: stdlib only, cheap to spawn)."""
    import base64
    import urllib.error

    url, user, decision, name, version = args
    body = json.dumps({"name": name, "version": version, "comment": "race"}).encode()
    req = urllib.request.Request(f"{url}/v1/{decision}", data=body, method="POST", headers={
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"{user}:{password(user)}".encode()).decode()})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return json.loads(resp.read())["state"]
    except urllib.error.HTTPError as exc:
        return f"refused: {json.loads(exc.read()).get('error')}"
