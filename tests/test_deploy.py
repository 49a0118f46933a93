"""`mergeops deploy` without a server, and what its deployments carry to the workers (the stack test,
tests/stack/test_work_pool.py, deploys to a real Prefect server and runs them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flows.config import load_config
from flows.deploy import HEARTBEAT_S, not_carried, run_environment
from flows.settings import get_settings

BIN = Path(sys.executable).parent


def test_deploy_without_a_prefect_server_is_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    out = subprocess.run([str(BIN / "mergeops"), "deploy", "--pool", "merges"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["error: deployments live on a Prefect server: set PREFECT_API_URL (e.g. "
                                       "http://prefect:4200/api) to the server your workers poll"]


def test_runs_carry_the_project_config_and_the_quiet_environment_never_credentials(tmp_path, monkeypatch):
    (tmp_path / "mergeops.yaml").write_text("tracking_uri: http://mlflow:5000\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MERGEOPS_CONFIG", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret-1234")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    env = run_environment(get_settings(load_config()))
    assert env["MERGEOPS_CONFIG"] == str(tmp_path.resolve() / "mergeops.yaml")
    assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_S)
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"
    assert "secret-1234" not in env.values() and "MLFLOW_TRACKING_PASSWORD" not in env


def test_settings_of_this_shell_that_runs_will_not_see_are_named(monkeypatch):
    for var in [v for v in os.environ if v.startswith("MERGEOPS_") or v in ("MLFLOW_TRACKING_URI",)]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("MERGEOPS_HOME", "/somewhere")
    monkeypatch.setenv("MERGEOPS_CONFIG", "/project/mergeops.yaml")  # carried: the runs read it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert not_carried() == ["MERGEOPS_HOME", "MLFLOW_TRACKING_URI"]
