"""The project config (mergeops.yaml) and the settings read over it: found upward, relative to its
folder, overridden by the environment; a command that reads the registry never creates a store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.config import load_config
from flows.errors import ConfigError
from flows.settings import get_settings


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("MERGEOPS_CONFIG", "MERGEOPS_HOME", "MLFLOW_TRACKING_URI", "MERGEOPS_MLFLOW_TRACKING_URI",
                "MERGEOPS_SUITE", "MERGEOPS_POLICY", "MERGEOPS_ZOO", "MERGEOPS_DVC_REMOTE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_the_config_is_found_upward_and_its_paths_resolve_against_its_folder(tmp_path: Path, clean_env) -> None:
    (tmp_path / "mergeops.yaml").write_text("home: state\nsuite: suites/acme.yaml\npolicy: p.yaml\nzoo: data/zoo\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    clean_env.chdir(deep)
    s = get_settings()
    assert s.config_file == tmp_path / "mergeops.yaml"
    assert s.home_dir == tmp_path / "state"
    assert s.tracking_uri == f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
    assert (s.suite, s.policy, s.zoo) == (str(tmp_path / "suites/acme.yaml"), str(tmp_path / "p.yaml"),
                                          str(tmp_path / "data/zoo"))
    assert s.recipe_base_dir == tmp_path  # a recipe's relative model paths start at the project root


def test_without_home_the_store_sits_beside_the_config_and_shipped_suite_names_stay_names(
        tmp_path: Path, clean_env) -> None:
    (tmp_path / "mergeops.yaml").write_text("suite: zoo-full\n")
    (tmp_path / "sub").mkdir()
    clean_env.chdir(tmp_path / "sub")
    s = get_settings()
    assert s.home_dir == tmp_path / ".mergeops"
    assert s.suite == "zoo-full"


def test_the_environment_overrides_the_config(tmp_path: Path, clean_env) -> None:
    (tmp_path / "mergeops.yaml").write_text("home: state\ntracking_uri: http://mlflow.internal:5000\nsuite: zoo\n")
    clean_env.chdir(tmp_path)
    clean_env.setenv("MERGEOPS_HOME", str(tmp_path / "elsewhere"))
    clean_env.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/other.db")
    clean_env.setenv("MERGEOPS_SUITE", "zoo-full")
    s = get_settings()
    assert (s.home_dir, s.tracking_uri, s.suite) == (tmp_path / "elsewhere", "sqlite:////tmp/other.db", "zoo-full")


def test_mergeops_config_names_the_file(tmp_path: Path, clean_env) -> None:
    cfg = tmp_path / "conf" / "team.yaml"
    cfg.parent.mkdir()
    cfg.write_text("home: ../store\n")
    clean_env.setenv("MERGEOPS_CONFIG", str(cfg))
    clean_env.chdir(tmp_path)
    assert get_settings().home_dir == tmp_path / "store"
    clean_env.setenv("MERGEOPS_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="missing.yaml: no such file"):
        get_settings()


@pytest.mark.parametrize("text, message", [
    ("hme: x\n", "hme: Extra inputs are not permitted"),
    ("- a\n- b\n", "a mapping is expected"),
    ("watch: [{recipe: a.yaml, polcy: p.yaml}]\n", "watch.0.polcy"),
    ("home: [unclosed\n", "not valid YAML"),
])
def test_a_bad_config_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "mergeops.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_key_with_a_newline_is_quoted_in_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "mergeops.yaml"
    path.write_text('"ho\\nme": x\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "'ho\\nme': Extra inputs are not permitted" in str(caught.value) and "\n" not in str(caught.value)


def test_a_config_that_is_not_a_config_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "mergeops.yaml"
    path.write_bytes(b"a: " + b"x" * (2 << 20))
    with pytest.raises(ConfigError, match="over the 1,048,576-byte limit"):
        load_config(path)
    path.write_bytes("home: x\n".encode("utf-16"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(path)
    path.write_text("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh")))
    with pytest.raises(ConfigError, match="aliases expand"):
        load_config(path)
    path.unlink()
    os.mkfifo(path)  # would block forever if opened
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(path)


@pytest.mark.parametrize("args", [["log", "verify"], ["lineage", "acme-merge"], ["approve", "acme-merge", "1",
                                                                                  "--reviewer", "bob"]])
def test_reading_the_registry_where_there_is_none_exits_2_and_creates_nothing(tmp_path: Path, clean_env,
                                                                               args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in __import__("os").environ.items()
                               if not k.startswith(("MERGEOPS_", "MLFLOW_TRACKING"))}
                          | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no mergeops store at ")
    assert str(tmp_path / ".mergeops") in lines[0] and "no mergeops.yaml in" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, var, kind", [(["log", "verify"], "MLFLOW_TRACKING_URI", "refused"),
                                             (["run", "recipe.yaml"], "MLFLOW_TRACKING_URI", "refused"),
                                             (["run", "recipe.yaml"], "PREFECT_API_URL", "refused"),
                                             (["log", "verify"], "MLFLOW_TRACKING_URI", "foreign"),
                                             (["run", "recipe.yaml"], "PREFECT_API_URL", "silent")])
def test_an_unreachable_server_is_one_line_within_seconds(tmp_path: Path, args: list[str], var: str,
                                                          kind: str) -> None:
    """refused: nobody listens; foreign: another HTTP service answers 404 there; silent: a socket
    accepts connections and never answers (a hung server, a black-holed route)."""
    import os
    import socket
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, HTTPServer

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = None
    if kind == "silent":
        sock.listen(8)  # the kernel completes the handshake; nothing ever reads or answers
    else:
        sock.close()
    if kind == "foreign":
        class NotFound(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_error(404)

            def log_message(self, *args):
                pass

        server = HTTPServer(("127.0.0.1", port), NotFound)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "recipe.yaml").write_text("merge_method: linear\nmodels: [{model: a}, {model: b}]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MERGEOPS_", "MLFLOW_TRACKING", "PREFECT_API"))}
    env |= {"PYTHONPATH": str(Path(__file__).resolve().parent.parent), var: f"http://127.0.0.1:{port}"
            + ("/api" if var == "PREFECT_API_URL" else "")}
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=tmp_path, capture_output=True,
                              text=True, env=env, timeout=120)
    finally:
        sock.close()
        if server is not None:
            server.shutdown()
            server.server_close()
    assert time.monotonic() - start < 30
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: the ") and var in line, line
    assert ("answers HTTP 404" if kind == "foreign" else "does not answer") in line, line
