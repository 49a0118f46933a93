"""The process around every command: silent on the network, quiet on the console, Prefect ready.

* ``quiet_environment``: no telemetry from Prefect, MLflow, DVC or Hugging Face, and the hubs are
  read offline (models and data come from local directories and caches). Each variable is only
  defaulted, so an operator's explicit setting wins.
* ``quiet_prefect_console``: a refusal is a mergeops error that the CLI prints as one ``error:``
  line; Prefect would also log it, with its traceback, from the task and again from the flow run.
  The console drops those copies and Prefect's engine chatter ("Created task run", "Finished in
  state Completed()"); what mergeops itself logs from flows/ and every warning stay. The API
  handler is untouched: a Prefect server's UI still shows every log line and state.
* ``LocalPrefectApi``: without ``PREFECT_API_URL`` a flow needs Prefect's local API server, a
  subprocess that takes seconds to boot. It starts first thing, while the command imports torch,
  transformers and MLflow, and may take up to 300 s (Prefect's own 20 s start-up timeout fails on
  a loaded 2-core machine).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from merge.errors import MergeopsError

_QUIET_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # An unreachable MLflow server: a few quick retries, not MLflow's minutes of backoff.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    # Measured: 6-16 s to start on an idle 2-core machine, over 20 s (Prefect's default) when loaded.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
}
_FLOWS_DIR = str(Path(__file__).resolve().parent)
# `log.warning(..., extra=UI_ONLY)`: for the Prefect UI's run log, not the console, where the CLI
# prints the same fact itself (as its one `error:` line).
UI_ONLY = {"mergeops_console": False}


def quiet_environment() -> None:
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)


def quiet_variables() -> dict[str, str]:
    """The quiet environment as this process has it (an operator's explicit setting kept), for the
    processes it has others start: a deployment's flow runs, a stack's servers and workers."""
    return {name: os.environ.get(name, value) for name, value in _QUIET_ENV.items()}


def check_reachable(url: str, what: str, setting: str, *, timeout: float = 10.0) -> None:
    """Raise ServerUnreachable (exit 2, one line) unless ``url`` (the server's health endpoint)
    answers within ``timeout`` seconds, with success or an authentication refusal. Any other HTTP
    status (a 404 from a proxy or another service on that port, a gateway's 502) is not the server."""
    from flows.errors import ServerUnreachable

    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            return  # it is there, and wants credentials
        raise ServerUnreachable(f"{what} at {url} answers HTTP {exc.code}: not its health check (another "
                                f"service or a proxy?); check the address in {setting}") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerUnreachable(f"{what} at {url} does not answer ({reason}); start it or fix {setting}") from None


class _ConsoleFilter(logging.Filter):
    """Keep warnings and mergeops's own lines; drop Prefect's copies of a mergeops refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, MergeopsError) or getattr(record, "mergeops_console", True) is False:
            return False  # the CLI prints it once, as `error: ...`
        if record.levelno >= logging.WARNING:
            return not _repeats_refusal(record) and not _flushing_at_exit(record)
        return record.pathname.startswith(_FLOWS_DIR)


def _repeats_refusal(record: logging.LogRecord) -> bool:
    """Prefect's "Finished in state Failed('... AuditFailed: ...')" lines name a mergeops error class."""
    message = record.getMessage()
    return "Finished in state Failed" in message or "Encountered exception during execution" in message


def _flushing_at_exit(record: logging.LogRecord) -> bool:
    """Prefect's background services (``EventsWorker``, ...) count down their queues while the
    process exits: "Still processing items: 1 items remaining..." is progress, not a problem."""
    return record.getMessage().startswith("Still processing items")


def quiet_prefect_console() -> None:
    """Install the console filter on Prefect's console handlers (after Prefect set up logging)."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # Prefect configures logging lazily; the handlers must exist to be filtered

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        handlers += [h for h in logging.getLogger(name).handlers if isinstance(h, PrefectConsoleHandler)]
    for handler in handlers:
        if not any(isinstance(f, _ConsoleFilter) for f in handler.filters):
            handler.addFilter(_ConsoleFilter())


def _api_url_in_prefect_files() -> bool:
    """Whether a Prefect settings file may name an API URL (a profile, prefect.toml, pyproject.toml,
    .env). Prefect reads them only once imported; in any doubt the command leaves the choice to it."""
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    candidates = [(Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")), "PREFECT_API_URL"),
                  (Path("prefect.toml"), ""), (Path(".env"), "PREFECT_API_URL"), (Path("pyproject.toml"), "tool.prefect")]
    for path, needle in candidates:
        try:
            if path.is_file() and needle in path.read_text(encoding="utf-8", errors="replace"):
                return True
        except OSError:
            continue
    return False


def _die_with_parent() -> None:
    """In the server's process before it starts: Linux sends it SIGTERM when the command that
    started it dies, so a killed command (SIGKILL, OOM) leaves no Prefect API server behind; the
    atexit hook covers ordinary exits only."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LocalPrefectApi:
    """Prefect's local API server for a command run without ``PREFECT_API_URL``, started at once.

    Prefect would start the same server (``uvicorn prefect.server.api.server:create_app`` with its
    ephemeral settings) when the first flow runs, after importing the server app into this process
    too; started here, the subprocess boots on the second core while this one imports torch,
    transformers and MLflow. ``PREFECT_API_URL`` then points at it, and ``MERGEOPS_PREFECT_LOCAL``
    says it is this command's own: nobody can answer an approval pause there, so runs do not wait
    for one (flows/approval.py). The server stops when the command exits.
    """

    ENV = "MERGEOPS_PREFECT_LOCAL"

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._port = 0
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a long-lived server never blocks on it

    def begin(self) -> "LocalPrefectApi":
        if os.environ.get("PREFECT_API_URL") or _api_url_in_prefect_files():
            return self  # a real server (or one started already): nothing to start
        self._spawn()
        url = f"http://127.0.0.1:{self._port}/api"
        os.environ["PREFECT_API_URL"] = os.environ[self.ENV] = url
        atexit.register(self.stop)
        return self

    def _spawn(self) -> None:
        with socket.socket() as sock:  # a free port, as the OS hands them out
            sock.bind(("127.0.0.1", 0))
            self._port = sock.getsockname()[1]
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app",
             "--host", "127.0.0.1", "--port", str(self._port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)

    def wait(self) -> None:
        """Return once the server answers its health check; raise PrefectUnavailable if it cannot."""
        from flows.errors import PrefectUnavailable

        if self._proc is None:
            return
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300"))
        deadline = time.monotonic() + timeout
        health = f"http://127.0.0.1:{self._port}/api/health"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._stderr.seek(0)
                detail = self._stderr.read().decode(errors="replace").strip().splitlines()
                raise PrefectUnavailable(f"Prefect's local API server exited with code {self._proc.returncode}"
                                         + (f" ({detail[-1][:200]})" if detail else "")
                                         + "; set PREFECT_API_URL to a running Prefect server")
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise PrefectUnavailable(f"Prefect's local API server did not answer within {timeout:.0f} s "
                                 "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS); raise it, or set "
                                 "PREFECT_API_URL to a running Prefect server")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        url = f"http://127.0.0.1:{self._port}/api"
        for var in ("PREFECT_API_URL", self.ENV):  # nothing points at the stopped server any more
            if os.environ.get(var) == url:
                del os.environ[var]
