"""Every command with bad inputs: exit 2 (or 1 where a check said no), exactly one ``error:`` line
on stderr, never a traceback or a hang. Missing, empty, binary and huge files, directories, FIFOs,
links to /dev/zero and to nowhere, empty and non-UTF-8 arguments, wrong types, a missing store and
a hostile audit log.

Most cases run in-process through click's CliRunner (the same ``_Group`` that maps errors for the
real ``mergeops``); a few run as real processes, where a FIFO or /dev/zero would hang for good.
Every in-process call is under an alarm, so a hang fails its case instead of the whole run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from audit_helpers import base_tensors, finetune, make_model
from click.testing import CliRunner

from flows.cli import cli

REPO = Path(__file__).resolve().parents[1]
KINDS = ("missing", "dir", "fifo", "zero", "empty", "binary", "huge", "dangling", "nonutf8", "emptyarg")


def _make(folder: Path, kind: str, suffix: str = "") -> str:
    """A path of ``kind`` (see KINDS) in ``folder``, as a command-line argument."""
    path = folder / f"{kind}{suffix}"
    if kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "binary":
        path.write_bytes(b"\xff\xfe\x00\x80garbage\x00" * 32)
    elif kind == "huge":
        with open(path, "wb") as fh:
            fh.truncate(300 << 20)  # sparse: 300 MB to a reader, nothing on disk
    elif kind == "dangling":
        path.symlink_to(folder / "nowhere")
    elif kind == "nonutf8":
        return os.fsdecode(bytes(folder) + b"/\xff\xfe" + suffix.encode())
    elif kind == "emptyarg":
        return ""
    return str(path)


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("hostile")
    return {kind: _make(folder, kind) for kind in KINDS}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> SimpleNamespace:
    """Two tiny crafted models, a recipe merging them and an empty MLflow store (no model is ever
    loaded: every case fails before that)."""
    from registry.mlflow_registry import client

    root = tmp_path_factory.mktemp("sweep") / "project"
    base = make_model(root / "models" / "base")
    tuned = make_model(root / "models" / "tuned", finetune(base_tensors(), seed=1), base_model="base")
    recipe = root / "recipe.yaml"
    recipe.write_text(f"merge_method: linear\nmodels:\n  - {{model: {base}, parameters: {{weight: 0.5}}}}\n"
                      f"  - {{model: {tuned}, parameters: {{weight: 0.5}}}}\ndtype: float32\n")
    (root / "mergeops.yaml").write_text("home: .mergeops\n")
    (root / ".mergeops").mkdir()
    client(f"sqlite:///{root / '.mergeops' / 'mlflow.db'}").search_registered_models()  # creates the db
    return SimpleNamespace(root=root, parents=[base, tuned], recipe=recipe)


@pytest.fixture
def in_project(project, monkeypatch):
    for var in [v for v in os.environ if v.startswith(("MERGEOPS_", "MLFLOW_TRACKING", "PREFECT_API_URL"))]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(project.root)
    return project


class _Hang(Exception):
    pass


@contextmanager
def _alarm(seconds: int):
    def ring(signum, frame):
        raise _Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _one_error_line(args: list[str], *, codes=(2,), env: dict | None = None) -> str | None:
    """None when ``mergeops ARGS`` failed properly, else what went wrong."""
    with _alarm(60):
        try:
            result = CliRunner().invoke(cli, args, env=env)
        except _Hang as exc:
            return f"{args}: {exc}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return f"{args}: raised {type(result.exception).__name__}: {result.exception}"
    lines = result.stderr.strip().splitlines()
    if result.exit_code not in codes or len(lines) != 1 or not lines[0].startswith("error: "):
        return f"{args}: exit {result.exit_code}, stderr {result.stderr[-400:]!r}"
    return None


def _sweep(cases: list[list[str]], **kw) -> None:
    failures = [f for f in (_one_error_line(args, **kw) for args in cases) if f]
    assert not failures, "\n".join(failures)


def test_merge_and_audit_refuse_every_bad_path(in_project, bad) -> None:
    proj = in_project
    out = str(proj.root / "out")
    cases = []
    for kind, path in bad.items():
        cases += [["merge", path, "--out", out], ["audit", str(proj.parents[0]), "--policy", path]]
        if kind not in ("missing", "emptyarg", "nonutf8", "dir"):  # a new or empty dir is a valid --out
            cases.append(["merge", str(proj.recipe), "--out", path])
    _sweep(cases)
    _sweep([["audit", path] for path in bad.values()], codes=(1, 2))  # an empty dir: audit findings, exit 1
    _sweep([["audit", "--pin", "=", str(proj.parents[0])], ["merge", str(proj.recipe)], ["merge"],
            ["audit"], ["nope"], ["--bogus"], ["zoo", "build", "--seed", "x"], ["zoo", "build", "--profile", "x"]])


def test_calibrate_refuses_every_bad_model_dir_data_file_and_out(in_project, bad, tmp_path) -> None:
    base, data = str(in_project.parents[0]), tmp_path / "cal.jsonl"
    data.write_text('{"prompt": "a", "target": "b"}\n')
    cases = []
    for kind, path in bad.items():
        cases += [["calibrate", path, "--data", str(data), "--kind", "fisher", "--out", str(tmp_path / "o.st")],
                  ["calibrate", base, "--data", path, "--kind", "fisher", "--out", str(tmp_path / "o.st")]]
        if kind in ("dir", "fifo", "zero", "dangling"):
            cases.append(["calibrate", base, "--data", str(data), "--kind", "gram", "--out", path])
    cases += [["calibrate", base, "--data", str(data), "--kind", "fisher", "--out", str(tmp_path / "o.st"),
               "--samples", n] for n in ("abc", "0", "-3")]
    cases.append(["calibrate", base, "--data", str(data), "--kind", "nope", "--out", str(tmp_path / "o.st")])
    _sweep(cases)
    assert not (tmp_path / "o.st").exists()


def test_evaluate_refuses_every_bad_option_file_and_suite_data(in_project, bad, tmp_path) -> None:
    base = str(in_project.parents[0])
    cache = ["--cache-dir", str(tmp_path / "cache")]
    cases = []
    for kind, path in bad.items():
        cases += [["evaluate", path], ["evaluate", "--merged", path, base],
                  *[["evaluate", base, option, path, *cache]
                    for option in ("--suite", "--policy", "--champion", "--audit", "--zoo")]]
    for kind in ("dir", "fifo", "zero", "binary", "huge", "dangling"):
        data = _make(tmp_path, kind, ".jsonl")
        suite = tmp_path / f"suite-{kind}.yaml"
        suite.write_text(f"domains:\n  d: {{tasks: [{{data: '{data}', prompt: question, target: answer}}]}}\n")
        cases.append(["evaluate", base, "--suite", str(suite), *cache])
    cases += [["evaluate"], ["evaluate", base, "--threads", "0"], ["evaluate", base, base]]
    _sweep(cases)


@pytest.mark.parametrize("kind", ["dir", "fifo", "zero", "binary", "huge-line", "deep", "cut", "bad-tail",
                                  "link-loop"])
def test_log_verify_names_a_hostile_audit_log_on_one_line(in_project, kind) -> None:
    log = in_project.root / ".mergeops" / "audit-log.jsonl"
    if kind in ("dir", "fifo", "zero", "binary"):
        _make(log.parent, kind)
        os.rename(log.parent / kind, log)
    elif kind == "huge-line":
        log.write_bytes(b"x" * (20 << 20) + b"\n")
    elif kind == "deep":
        log.write_bytes(b"[" * 100_000 + b"]" * 100_000 + b"\n")
    elif kind == "cut":
        log.write_bytes(b'{"seq": 1, "event": "registered"')
    elif kind == "bad-tail":
        from registry.audit_log import AuditLog

        AuditLog(log).append("verified", model="m", version="1")
        with open(log, "ab") as fh:
            fh.write(b'{"seq": 2,\n')
    else:
        log.symlink_to(log)
    try:
        _sweep([["log", "verify"]], codes=(1, 2))
        _sweep([["approve", "m", "1", "--reviewer", "bob"], ["lineage", "m"]])
    finally:
        if log.is_dir() and not log.is_symlink():
            log.rmdir()
        else:
            log.unlink()


def test_registry_commands_refuse_bad_names_versions_and_stores(in_project, bad, tmp_path) -> None:
    cases = [["lineage", ""], ["lineage", "@1"], ["lineage", "m@99999999999999999999"], ["approve", "m", "abc",
             "--reviewer", "bob"], ["approve", "m", "1", "--reviewer", ""], ["reject", "m", "1", "--reviewer", "bob",
             "--comment", ""], ["promote", "m", "1", "--by", "carol"], ["verify", "m"], ["verify", "@1"],
             ["log", "nope"], ["approve", "m", "1"], ["lineage", bad["nonutf8"]]]
    _sweep(cases)
    for kind in ("dir", "fifo", "zero", "binary", "missing", "dangling"):
        _sweep([["log", "verify"], ["lineage", "m"]], env={"MERGEOPS_HOME": bad[kind]})
        _sweep([["log", "verify"]], env={"MERGEOPS_CONFIG": bad[kind]})
    (tmp_path / ".mergeops").mkdir()
    (tmp_path / ".mergeops" / "mlflow.db").write_bytes(b"not a database" * 100)
    _sweep([["log", "verify"], ["lineage", "m"]], env={"MERGEOPS_HOME": str(tmp_path / ".mergeops")})
    _sweep([["log", "verify"]], env={"MLFLOW_TRACKING_URI": "bogus://nowhere"})


def test_run_and_watch_refuse_a_bad_recipe_before_any_flow(in_project, bad) -> None:
    cases = []
    for kind, path in bad.items():
        cases += [["run", path], ["watch", "--once", "--recipe", path]]
    _sweep(cases)


def test_real_processes_answer_hostile_files_on_one_line(in_project, bad, tmp_path) -> None:
    """As installed: FIFOs and /dev/zero must not hang a real process, nor bytes that are not
    UTF-8 in argv crash it."""
    log = in_project.root / ".mergeops" / "audit-log.jsonl"
    os.mkfifo(log)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MERGEOPS_", "MLFLOW_", "PREFECT_API_URL"))}
    env["PYTHONPATH"] = str(REPO)
    try:
        for args in (["log", "verify"], ["evaluate", str(in_project.parents[0]), "--champion", bad["zero"]],
                     ["merge", os.fsencode(bad["nonutf8"]), "--out", str(tmp_path / "out")]):
            proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=in_project.root, env=env,
                                  capture_output=True, timeout=120)
            err = proc.stderr.decode(errors="replace")
            lines = err.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (args, err)
    finally:
        log.unlink()
