"""``mergeops zoo build`` on the command line: help, bad input, exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from flows.cli import cli


def test_help_shows_examples():
    runner = CliRunner()
    for args in ([], ["zoo", "build"]):
        result = runner.invoke(cli, [*args, "--help"])
        assert result.exit_code == 0
        assert "Example:" in result.output and "mergeops zoo build --profile tiny" in result.output


def test_unknown_profile_exits_2_with_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["zoo", "build", "--profile", "huge", "--out", str(tmp_path / "zoo")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown zoo profile 'huge'" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_out_exits_2_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # Root ignores permission bits, so make --out's parent a regular file instead.
    result = CliRunner().invoke(cli, ["zoo", "build", "--profile", "tiny", "--out", str(blocker / "zoo")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_build_prints_scorecard_and_replaces_an_older_zoo(tiny_zoo, tmp_path):
    out = tmp_path / "zoo"
    runner = CliRunner()
    for _ in range(2):  # the second build replaces the first
        result = runner.invoke(cli, ["zoo", "build", "--profile", "tiny", "--out", str(out), "--seed", "1"])
        assert result.exit_code == 0, result.output
    assert "proprietary" in result.stdout and "reverse" in result.stdout.splitlines()[0]
    # stderr is not a terminal here: plain progress lines per model trained and scored, no bars
    assert "\r" not in result.stderr
    for line in ("zoo: training base 100% (30/30 steps)", "zoo: training sort 100% (10/10 steps)",
                 "zoo: scoring 100% (28/28 scores)"):  # 7 models (odd-pickle is never loaded) x 4
        assert line in result.stderr, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["zoo"]
    assert (out / "zoo.json").read_text() != (tiny_zoo / "zoo.json").read_text()  # seed 1 differs from seed 0


@pytest.mark.heavy
def test_the_command_builds_with_kernels_held_to_avx2(tmp_path):
    """`mergeops zoo build` starts over in a process whose torch and MKL kernels are held to AVX2, so one
    seed gives one zoo on any x86-64 CPU: its bytes equal a build run with the pins set by hand."""
    import os
    import platform
    import subprocess
    import sys

    from flows.cli_zoo import ZOO_ISA, _has_avx2

    if platform.machine().lower() not in ("x86_64", "amd64") or not _has_avx2():
        pytest.skip("the pins apply to x86-64 CPUs with AVX2")
    env = {k: v for k, v in os.environ.items() if k not in ZOO_ISA}
    mergeops = Path(sys.executable).parent / "mergeops"
    for name, extra in (("plain", {}), ("pinned", ZOO_ISA)):
        done = subprocess.run([str(mergeops), "zoo", "build", "--profile", "tiny", "--out", str(tmp_path / name)],
                              env={**env, **extra}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    weights = [(tmp_path / n / "models" / "base" / "model.safetensors").read_bytes() for n in ("plain", "pinned")]
    assert weights[0] == weights[1]
