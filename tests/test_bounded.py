"""Bounded reading: hostile files cost bounded time and memory and end in one clear line."""

from __future__ import annotations

import json
import os

import pytest

from merge.bounded import load_yaml, loads_json, read_bytes, read_text
from merge.errors import UsageError

BOMB = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh"))


def test_an_alias_bomb_is_refused_and_ordinary_anchors_are_read() -> None:
    with pytest.raises(UsageError, match="aliases expand to more than"):
        load_yaml(BOMB, what="recipe.yaml")
    assert load_yaml("base: &b {weight: 0.5}\nmodels: [*b, *b]\n", what="r") == {
        "base": {"weight": 0.5}, "models": [{"weight": 0.5}, {"weight": 0.5}]}


def test_deep_json_is_refused_before_parsing_and_brackets_in_strings_do_not_count() -> None:
    with pytest.raises(UsageError, match="deeper than 64"):
        loads_json("[" * 100_000 + "]" * 100_000, what="header")
    assert loads_json(json.dumps({"k": "[[[[" * 100, "v": [[1]]}), what="h") == {"k": "[[[[" * 100, "v": [[1]]}
    with pytest.raises(UsageError, match="not valid JSON"):
        loads_json(b'{"a": ', what="index")
    with pytest.raises(UsageError, match="not UTF-8"):
        loads_json(b'{"a": "\xff"}', what="index")


def test_devices_fifos_big_files_and_links_out_are_refused_without_reading(tmp_path) -> None:
    with pytest.raises(UsageError, match="not a regular file"):
        read_bytes("/dev/zero", what="recipe")
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        read_bytes(fifo, what="config")  # would block forever if opened
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * 2048)
    with pytest.raises(UsageError, match="over the 1,024-byte limit"):
        read_bytes(big, limit=1024, what="recipe")
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    model = tmp_path / "model"
    model.mkdir()
    (model / "README.md").symlink_to(outside)
    with pytest.raises(UsageError, match="outside"):
        read_bytes(model / "README.md", what="model card", inside=model)
    (tmp_path / "u16.yaml").write_bytes("a: 1".encode("utf-16"))
    with pytest.raises(UsageError, match="looks like UTF-16"):
        read_text(tmp_path / "u16.yaml", what="recipe")
