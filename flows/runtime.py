"""The process around every command: silent on the network, quiet on the console, Prefect ready.

* ``quiet_environment``: no telemetry from Prefect, MLflow, DVC or Hugging Face, and the hubs are
  read offline (models and data come from local directories and caches). Each variable is only
  defaulted, so an operator's explicit setting wins.
* ``quiet_prefect_console``: a refusal is a mergeops error that the CLI prints as one ``error:``
  line; Prefect would also log it, with its traceback, from the task and again from the flow run.
  The console drops those copies and Prefect's engine chatter ("Created task run", "Finished in
  state Completed()"); what mergeops itself logs from flows/ and every warning stay. The API
  handler is untouched: a Prefect server's UI still shows every log line and state.
* ``start_ephemeral_prefect``: without ``PREFECT_API_URL`` Prefect starts a local API server in a
  subprocess, which takes seconds on a busy machine. It starts in a background thread while the
  command imports torch, transformers and MLflow, and its start-up timeout is raised from
  Prefect's 20 s, which a loaded 2-core machine exceeds.
"""

from __future__ import annotations

import logging
import os
import threading
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


class _ConsoleFilter(logging.Filter):
    """Keep warnings and mergeops's own lines; drop Prefect's copies of a mergeops refusal."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, MergeopsError) or getattr(record, "mergeops_console", True) is False:
            return False  # the CLI prints it once, as `error: ...`
        if record.levelno >= logging.WARNING:
            return not _repeats_refusal(record)
        return record.pathname.startswith(_FLOWS_DIR)


def _repeats_refusal(record: logging.LogRecord) -> bool:
    """Prefect's "Finished in state Failed('... AuditFailed: ...')" lines name a mergeops error class."""
    message = record.getMessage()
    return "Finished in state Failed" in message or "Encountered exception during execution" in message


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


class PrefectStart:
    """Start Prefect's ephemeral API server in the background; ``wait()`` before the first flow."""

    def __init__(self) -> None:
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def begin(self) -> "PrefectStart":
        from flows.settings import get_settings

        if get_settings().prefect_api_url:
            return self  # a real server: nothing to start
        self._thread = threading.Thread(target=self._start, name="prefect-ephemeral-start", daemon=True)
        self._thread.start()
        return self

    def _start(self) -> None:
        try:
            from prefect.server.api.server import SubprocessASGIServer

            SubprocessASGIServer().start()
        except BaseException as exc:  # re-raised by wait() in the command's thread
            self._error = exc

    def wait(self) -> None:
        from flows.errors import PrefectUnavailable

        if self._thread is None:
            return
        self._thread.join()
        if self._error is not None:
            timeout = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
            raise PrefectUnavailable(
                f"Prefect's local API server did not start ({str(self._error).splitlines()[0][:200]}); "
                f"start-up timeout {timeout} s (PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS), "
                "or set PREFECT_API_URL to a running Prefect server") from None
