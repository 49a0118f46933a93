"""Real servers on loopback for the stack suite: PostgreSQL, an S3 endpoint (moto), an authenticated
MLflow server, the governance service, a Prefect server and its workers. Each is a subprocess in its own session on a free port of
127.0.0.1, stopped with its process group when its context ends, at interpreter exit, or on SIGTERM,
so a failing or interrupted run leaves nothing behind."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
ADMIN = ("admin", "admin-password-1234")
PEOPLE = ("alice", "bob", "carol", "mergeops-svc")

# Tiny models score ~0: a policy without score floors (the audit, licence and leakage gates still decide).
OPEN_POLICY = "domain_minimums: {default: null}\nretention_minimums: {default: null}\n"


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


_RUNNING: set[subprocess.Popen] = set()


def _stop_all() -> None:
    for proc in list(_RUNNING):
        stop(proc)


def _on_sigterm(signum, frame) -> None:
    _stop_all()
    raise SystemExit(128 + signum)  # (unwinds the fixtures too: their temp dirs go)


def start(cmd: list[str], log: Path, **popen) -> subprocess.Popen:
    """``cmd`` in its own session, output to ``log``; stopped at exit or SIGTERM if not before."""
    if not _RUNNING and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
        atexit.register(_stop_all)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    _RUNNING.add(proc)
    return proc


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop ``proc``'s process group, and every process it started that left the group (a Prefect
    worker runs each flow run in a session of its own)."""
    strays = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # (a worker it forked may outlive the leader: nothing of the group survives)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    kill_all(strays)
    _RUNNING.discard(proc)


def descendants(pid: int) -> list:
    """The processes ``pid`` started, and theirs (psutil handles: safe against a reused pid)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def kill_all(procs: list) -> None:
    """SIGKILL each of ``procs`` (psutil handles) still running, with its own process group when it
    leads one, and wait until they are gone."""
    import psutil

    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            if p.is_running() and os.getpgid(p.pid) == p.pid:
                os.killpg(p.pid, signal.SIGKILL)
            p.kill()
    psutil.wait_procs(procs, timeout=15)


def as_user(user: str, **extra: str) -> dict[str, str]:
    """The environment of a command run by ``user`` (MLflow basic-auth credentials)."""
    pw = ADMIN[1] if user == ADMIN[0] else password(user)
    return {**os.environ, "MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": pw, **extra}


@contextlib.contextmanager
def mlflow_basic_auth(root: Path, *, backend: str | None = None, auth_db: str | None = None,
                      artifacts: str | None = None, env: dict[str, str] | None = None):
    """``mlflow server --app-name basic-auth`` with default READ, and the people of PEOPLE.

    By default its stores are sqlite files and a folder under ``root``; ``backend`` / ``auth_db``
    (database URIs, e.g. PostgreSQL) and ``artifacts`` (e.g. ``s3://bucket/mlflow``, with the S3
    settings in ``env``) put them elsewhere."""
    root.mkdir(parents=True, exist_ok=True)
    ini = root / "basic_auth.ini"
    auth_db = auth_db or f"sqlite:///{root / 'auth.db'}"
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {auth_db}\n"
                   f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                   # each request re-derives the password hash otherwise (about a second on 2 busy cores)
                   "auth_cache_ttl_seconds = 300\n")
    port = free_port()
    log = root / "mlflow.log"
    server_env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "stack-test-secret",
                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    proc = start(
        [str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--backend-store-uri",
         backend or f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", artifacts or str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], log, env=server_env)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{uri}/health", proc, log, timeout=300)  # (migrating a new PostgreSQL schema takes a while)
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
def governance_service(mlflow_uri: str, home: Path, env: dict[str, str] | None = None):
    """``mergeops serve`` as the service account, its home (audit log, signing key) under ``home``."""
    port = free_port()
    log = home.parent / "service.log"
    home.mkdir(parents=True, exist_ok=True)
    proc = start([str(BIN / "mergeops"), "serve", "--port", str(port)], log,
                 env=as_user("mergeops-svc", MLFLOW_TRACKING_URI=mlflow_uri, MERGEOPS_HOME=str(home), **(env or {})))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/v1/health", proc, log, timeout=60)
        yield {"url": url, "home": home, "log": home / "audit-log.jsonl", "public_key": home / "keys" / "signing-key.pem.pub",
               "service_log": log}
    finally:
        stop(proc)


# -- a person at the CLI -----------------------------------------------------------------------------
def mergeops(stack, user: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`mergeops ARGS` as ``user``, pointed at the server and the service, the key pinned."""
    cwd = stack["tmp"] / f"cwd-{user}"
    cwd.mkdir(exist_ok=True)
    return subprocess.run([str(BIN / "mergeops"), *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env=as_user(user, MLFLOW_TRACKING_URI=stack["uri"], MERGEOPS_SERVICE_URL=stack["url"],
                                      MERGEOPS_SERVICE_PUBLIC_KEY=str(stack["public_key"]),
                                      MERGEOPS_HOME=str(cwd / ".mergeops"), **env))


def _client(user: str):
    from registry.service_client import ServiceClient

    env = as_user(user)
    return ServiceClient("", env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])


def register(stack, name: str, seed: int, requester: str = "alice", monkeypatch=None) -> str:
    """A candidate submitted by ``requester`` and registered by the service; its version."""
    from test_lineage import make_lineage  # (tests/, on the path of every stack test module)

    from registry.service_client import submit_registration

    work = stack["tmp"] / f"{name}-{seed}"
    record, merged = make_lineage(work, merged_seed=seed, requested_by="somebody-typed")
    client = _client(requester)
    client.url = stack["url"]
    env = as_user(requester)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
    answer = submit_registration(client, stack["uri"], name=name, model_dir=merged, lineage=record)
    assert answer["status"] == "registered"
    return answer["version"]


# -- PostgreSQL and S3 ------------------------------------------------------------------------------
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "stack-test", "AWS_SECRET_ACCESS_KEY": "stack-test-secret",
                  "AWS_DEFAULT_REGION": "us-east-1"}


def postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server binaries (Debian's newest, else ``initdb`` on PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@contextlib.contextmanager
def postgres(log_dir: Path):
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth, user ``postgres``), removed after.

    The postmaster runs in the foreground in its own session, so it is stopped like every other
    server here (SIGINT: PostgreSQL's fast shutdown). PostgreSQL refuses to run as root: there it
    runs as the ``postgres`` account, in a data folder of its own outside pytest's private tmp."""
    pg = postgres_bin()
    if pg is None:
        raise RuntimeError("PostgreSQL's initdb was not found: apt-get install postgresql")
    as_root = os.geteuid() == 0
    top = Path(tempfile.mkdtemp(prefix="mergeops-pg-"))
    data = top / "data"
    user = {"user": "postgres", "group": "postgres"} if as_root else {}
    if as_root:
        shutil.chown(top, "postgres", "postgres")
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "postgres.log"
    port = free_port()
    proc = None
    try:
        subprocess.run([str(pg / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, **user)
        proc = start([str(pg / "postgres"), "-D", str(data), "-p", str(port), "-k", str(top),
                      "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"], log, **user)
        deadline = time.monotonic() + 60
        while subprocess.run([str(pg / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not come up: {log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        url = f"postgresql://postgres@127.0.0.1:{port}"

        def createdb(name: str) -> str:
            subprocess.run([str(pg / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", name],
                           check=True, capture_output=True)
            return f"{url}/{name}"

        def sql(db: str, query: str) -> list[list[str]]:
            out = subprocess.run([str(pg / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db,
                                  "-XAt", "-F", "\t", "-c", query], check=True, capture_output=True, text=True)
            return [line.split("\t") for line in out.stdout.splitlines()]

        yield {"url": url, "port": port, "createdb": createdb, "sql": sql}
    finally:
        if proc is not None:
            stop(proc, signal.SIGINT)
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def s3_server(log_dir: Path, bucket: str = "mergeops"):
    """An S3 endpoint (moto's server mode) on 127.0.0.1 with one empty bucket; ``env`` holds what a
    client needs (endpoint and dummy credentials)."""
    import boto3

    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "s3.log"
    port = free_port()
    proc = start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log,
                 env={**os.environ, **S3_CREDENTIALS})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{endpoint}/moto-api/", proc, log, timeout=60)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket=bucket)
        yield {"endpoint": endpoint, "bucket": bucket, "client": client,
               "env": {**S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": endpoint}}
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


# -- Prefect server and workers ---------------------------------------------------------------------
def add_user(uri: str, user: str) -> None:
    """One more MLflow user (password: ``password(user)``), e.g. the account a worker runs as."""
    _admin_call(uri, "/api/2.0/mlflow/users/create", {"username": user, "password": password(user)})


@contextlib.contextmanager
def prefect_server(root: Path, database: str):
    """``prefect server start`` on 127.0.0.1 with its database at ``database`` (a SQLAlchemy URL,
    e.g. ``postgresql+asyncpg://…``), no UI, telemetry off. Yields its API URL and ``env``: what a
    client (a worker, ``mergeops deploy``) needs to reach it, quietly."""
    from flows.runtime import quiet_variables

    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = root / "prefect-server.log"
    quiet = {**quiet_variables(), "DO_NOT_TRACK": "1", "PREFECT_HOME": str(root / "home")}
    proc = start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], log,
                 env={**os.environ, **quiet, "PREFECT_API_DATABASE_CONNECTION_URL": database,
                      "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    api = f"http://127.0.0.1:{port}/api"
    try:
        wait_for(f"{api}/health", proc, log, timeout=300)  # (a new PostgreSQL schema: a minute of migrations)
        yield {"api": api, "proc": proc, "log": log, "env": {**quiet, "PREFECT_API_URL": api}}
    finally:
        stop(proc)


@contextlib.contextmanager
def prefect_worker(pool: str, name: str, log: Path, env: dict[str, str], limit: int = 2):
    """``prefect worker start --pool POOL --type process``: runs ``limit`` flow runs at once, each a
    subprocess in a session of its own, stopped with the worker."""
    proc = start([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name,
                  "--limit", str(limit)], log, env=env, cwd=log.parent)
    try:
        yield proc
    finally:
        stop(proc)
