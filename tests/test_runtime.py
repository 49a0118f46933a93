"""The process around a command: telemetry off, hubs offline, and a console that shows a refusal once."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows import runtime
from registry.errors import AuditFailed


def _record(level: int, msg: str, *, path: str, exc: BaseException | None = None, **extra) -> logging.LogRecord:
    record = logging.LogRecord("prefect.flow_runs", level, path, 1, msg, None,
                               (type(exc), exc, None) if exc else None)
    record.__dict__.update(extra)
    return record


def test_the_console_shows_mergeops_lines_and_warnings_but_no_copies_of_a_refusal() -> None:
    keep = runtime._ConsoleFilter().filter
    ours = os.path.join(runtime._FLOWS_DIR, "pipeline.py")
    engine = os.path.join(os.path.dirname(logging.__file__), "prefect_engine.py")
    assert keep(_record(logging.INFO, "merge done", path=ours))
    assert not keep(_record(logging.INFO, "Finished in state Completed()", path=engine))
    assert keep(_record(logging.WARNING, "disk almost full", path=engine))
    refusal = AuditFailed("audit failed: licence")
    assert not keep(_record(logging.ERROR, "Task run failed with exception", path=engine, exc=refusal))
    assert keep(_record(logging.ERROR, "Task run failed with exception", path=engine, exc=KeyError("bug")))
    assert not keep(_record(logging.INFO, "Finished in state Failed('AuditFailed: ...')", path=engine))
    assert not keep(_record(logging.WARNING, "re-merge stopped", path=ours, **runtime.UI_ONLY))


def test_quiet_environment_defaults_but_never_overrides(monkeypatch) -> None:
    for name in runtime._QUIET_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # an operator's explicit choice stays
    runtime.quiet_environment()
    assert os.environ["HF_HUB_OFFLINE"] == "0"
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ["DVC_NO_ANALYTICS"] == "1"
    assert int(os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) > 20


def test_a_prefect_server_named_anywhere_is_used_instead_of_a_local_one(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    for var in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", runtime.LocalPrefectApi.ENV):
        monkeypatch.setenv(var, "")  # recorded, so whatever the test sets is undone after it
        monkeypatch.delenv(var)
    assert not runtime._api_url_in_prefect_files()
    (tmp_path / "prefect-home").mkdir()
    (tmp_path / "prefect-home" / "profiles.toml").write_text(
        'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://prefect.internal:4200/api"\n')
    assert runtime._api_url_in_prefect_files()
    api = runtime.LocalPrefectApi().begin()  # nothing started, nothing set: Prefect reads its profile
    assert api._proc is None and "PREFECT_API_URL" not in os.environ
    api.wait()


def test_the_local_prefect_api_starts_answers_and_stops(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for var in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", runtime.LocalPrefectApi.ENV):
        monkeypatch.setenv(var, "")  # recorded, so whatever the test sets is undone after it
        monkeypatch.delenv(var)
    api = runtime.LocalPrefectApi().begin()
    try:
        url = os.environ["PREFECT_API_URL"]
        assert url == os.environ[runtime.LocalPrefectApi.ENV] and url.startswith("http://127.0.0.1:")
        from flows.settings import get_settings

        assert get_settings().prefect_server is None  # the command's own server: no approval pause
        api.wait()
        import urllib.request

        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            assert response.status == 200
        proc = api._proc
    finally:
        api.stop()
    assert proc.poll() is not None


def test_a_killed_command_leaves_no_prefect_api_server_behind(tmp_path) -> None:
    import psutil

    code = ("import os, signal\nfrom flows.runtime import LocalPrefectApi\n"
            "api = LocalPrefectApi().begin()\nprint(api._proc.pid, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == -signal.SIGKILL, done.stderr
    server = int(done.stdout.split()[0])

    def alive() -> bool:
        try:
            return psutil.Process(server).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(), "the Prefect API server outlived the command that started it"
