"""The process around a command: telemetry off, hubs offline, and a console that shows a refusal once."""

from __future__ import annotations

import logging
import os

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
