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


def _hostile(tmp_path, name: str, kind: str):
    """``tmp_path/name`` as a hostile file of ``kind``: a FIFO, a link to /dev/zero, 40 MiB of
    JSON, a directory, binary garbage or JSON of the wrong shape."""
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "big":
        with open(path, "wb") as fh:
            fh.truncate(40 << 20)
    elif kind == "dir":
        path.mkdir()
    elif kind == "garbage":
        path.write_bytes(b"\xff\xfe\x00{" * 64)
    else:
        path.write_text('{"files": 7, "content_id": []}')
    return path


@pytest.mark.parametrize("kind", ["fifo", "zero", "big", "dir", "garbage", "shape"])
def test_a_hostile_merge_manifest_is_one_error_line(tmp_path, kind) -> None:
    from merge.errors import MergeopsError
    from registry.model_files import check_model_dir

    (tmp_path / "model.safetensors").write_bytes(b"x")
    _hostile(tmp_path, "mergeops.manifest.json", kind)
    with pytest.raises(MergeopsError) as info:
        check_model_dir(tmp_path)
    assert "mergeops.manifest.json" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["fifo", "zero", "big", "dir", "garbage", "shape"])
def test_hostile_champion_and_audit_files_are_one_error_line(tmp_path, kind) -> None:
    from flows.cli_evaluate import _champion, _verdicts

    path = str(_hostile(tmp_path, "scores.json", kind))
    for option, read in (("--champion", _champion), ("--audit", _verdicts)):
        with pytest.raises(UsageError, match=f"^{option} ") as info:
            read(path)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["fifo", "zero", "big", "garbage"])
def test_a_hostile_hugging_face_ref_file_is_one_error_line(tmp_path, monkeypatch, kind) -> None:
    from merge.errors import MergeopsError
    from merge.hub import resolve_model

    refs = tmp_path / "models--acme--tiny" / "refs"
    refs.mkdir(parents=True)
    _hostile(refs, "main", kind)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(MergeopsError) as info:
        resolve_model("acme/tiny@main")
    assert "\n" not in str(info.value)
