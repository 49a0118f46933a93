"""Docs cannot drift: every command and every merge method is in the README, every command's help
has a runnable example."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from flows.cli import cli
from merge.methods import METHODS

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        out += _leaf_commands(command, path) if isinstance(command, click.Group) else [path]
    return out


COMMANDS = _leaf_commands(cli)


def test_the_cli_has_the_design_commands():
    names = {" ".join(c) for c in COMMANDS}
    assert {"zoo build", "audit", "merge", "evaluate", "run", "lineage", "approve", "reject",
            "promote", "verify", "watch", "log verify"} <= names


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_is_documented_with_an_example(command):
    assert f"mergeops {' '.join(command)}" in README
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output
    assert f"mergeops {' '.join(command)}" in result.output


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_merge_method_is_documented(method):
    assert f"`{method}`" in README
