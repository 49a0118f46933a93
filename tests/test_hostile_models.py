"""Hostile model directories through the real commands: each one exit code, one ``error:`` line or
the named audit finding, no traceback, no hang, nothing written.

Cases that would hang or fill memory on a regression (FIFOs, ``/dev/zero``, alias bombs) run in a
child process under a timeout, several commands per process so torch is imported once.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from audit_helpers import make_model, pickle_bomb, raw_safetensors
from click.testing import CliRunner

from flows.cli import cli
from merge.errors import CompatibilityError, UsageError
from merge.manifest import file_entries
from merge.pickle_scan import looks_pickled_bytes
from merge.vocab import read_vocab

_RUNNER = """
import json, sys
from click.testing import CliRunner
from flows.cli import cli
out = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(cli, args)
    out.append({"code": r.exit_code, "out": r.stdout, "err": r.stderr, "exc": repr(r.exception)})
print("RESULTS" + json.dumps(out))
"""


def isolated(*commands: list[str], timeout: int = 240) -> list[dict]:
    """Run mergeops commands (CliRunner) in a child process; a hang fails the test, not the suite."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MERGEOPS_PROGRESS": "off"}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(list(commands))], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.split("RESULTS", 1)[1])


def one_error(result: dict, code: int = 2, needle: str = "") -> str:
    """The command failed with ``code`` and said so on exactly one ``error:`` line, no traceback."""
    assert result["code"] == code, result
    lines = [ln for ln in result["err"].splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result["err"] + result["out"], result
    assert needle in lines[0], lines[0]
    return lines[0]


def audit_checks(result: dict) -> dict[str, str]:
    """check -> message of an `audit --json` run that exited 1 without a traceback."""
    assert result["code"] == 1 and "Traceback" not in result["err"], result
    return {f["check"]: f["message"] for f in json.loads(result["out"])["findings"] if f["severity"] == "error"}


def recipe_for(tmp_path: Path, *parents: Path) -> Path:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"merge_method": "linear", "models": [
        {"model": str(p), "parameters": {"weight": 1.0}} for p in parents]}))
    return recipe


def merge_args(tmp_path: Path, *parents: Path) -> list[str]:
    return ["merge", str(recipe_for(tmp_path, *parents)), "--out", str(tmp_path / "out")]


# --- safetensors headers and shard indexes ---------------------------------------------------------

def _deep_header(model: Path) -> None:
    nest = b"[" * 50_000 + b"]" * 50_000
    (model / "model.safetensors").write_bytes(len(nest).to_bytes(8, "little") + nest)


def _typed_header(model: Path) -> None:
    raw_safetensors(model / "model.safetensors", {"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)


def _huge_int_header(model: Path) -> None:
    doc = b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}'
    (model / "model.safetensors").write_bytes(len(doc).to_bytes(8, "little") + doc + b"\0" * 4)


def _overlap_header(model: Path) -> None:
    raw_safetensors(model / "model.safetensors", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                                  "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)


def _index(model: Path, body: bytes) -> None:
    (model / "model.safetensors.index.json").write_bytes(body)


HEADERS = {
    "deep-nesting": (_deep_header, "nested deeper"),
    "dtype-not-a-string": (_typed_header, "unknown dtype"),
    "5000-digit-dimension": (_huge_int_header, "model.safetensors"),
    "overlapping-offsets": (_overlap_header, "overlaps"),
    "weight_map-a-list": (lambda m: _index(m, b'{"weight_map": ["model.safetensors"]}'), "weight_map"),
    "weight_map-int-values": (lambda m: _index(m, b'{"weight_map": {"model.norm.weight": 7}}'), "not a shard"),
    "index-not-utf8": (lambda m: _index(m, b'{"weight_map": {"\xff\xfe": "model.safetensors"}}'), "not UTF-8"),
    "shard-dotdot": (lambda m: _index(m, b'{"weight_map": {"model.norm.weight": "../x.safetensors"}}'), "outside"),
    "shard-absolute": (lambda m: _index(m, b'{"weight_map": {"model.norm.weight": "/etc/passwd"}}'), "outside"),
}


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_a_crafted_header_or_index_is_one_finding_in_audit_and_one_error_in_merge(tmp_path, case):
    craft, needle = HEADERS[case]
    good, bad = make_model(tmp_path / "good"), make_model(tmp_path / "bad")
    craft(bad)
    runner = CliRunner()
    audit = runner.invoke(cli, ["audit", str(bad), "--json"])
    checks = audit_checks({"code": audit.exit_code, "out": audit.stdout, "err": audit.stderr})
    assert "format.header" in checks and needle in checks["format.header"], checks
    merged = runner.invoke(cli, merge_args(tmp_path, good, bad))
    line = one_error({"code": merged.exit_code, "out": merged.stdout, "err": merged.stderr}, 2, needle)
    assert str(bad) in line and not (tmp_path / "out").exists()


# --- FIFOs, devices and links out of the directory -------------------------------------------------

def _fifo(model: Path, name: str) -> None:
    (model / name).unlink(missing_ok=True)
    os.mkfifo(model / name)


def _dev_zero(model: Path, name: str) -> None:
    (model / name).unlink(missing_ok=True)
    (model / name).symlink_to("/dev/zero")


SIDE_FILES = [("config.json", _dev_zero), ("config.json", _fifo), ("tokenizer.json", _fifo),
              ("README.md", _dev_zero), ("generation_config.json", _dev_zero), ("LICENSE", _fifo)]


def test_fifos_and_dev_zero_in_a_model_dir_end_each_command_at_once(tmp_path):
    good = make_model(tmp_path / "good")
    commands, dirs = [], []
    for i, (name, make) in enumerate(SIDE_FILES):
        bad = make_model(tmp_path / f"bad{i}")
        make(bad, name)
        dirs.append(bad)
        commands += [["audit", str(bad), "--json"], merge_args(tmp_path / f"bad{i}", good, bad)]
    results = isolated(*commands)
    for i, (name, _) in enumerate(SIDE_FILES):
        audit, merged = results[2 * i], results[2 * i + 1]
        checks = audit_checks(audit)
        assert "format.file" in checks and name in checks["format.file"], (name, checks)
        assert name in one_error(merged, 2) and not (tmp_path / f"bad{i}" / "out").exists()


def test_a_link_leaving_the_model_dir_is_refused_by_the_manifest_and_a_fifo_is_never_hashed(tmp_path):
    model = make_model(tmp_path / "m")
    (tmp_path / "secret").write_text("{}")
    (model / "extra.json").symlink_to(tmp_path / "secret")
    with pytest.raises(UsageError, match="extra.json is a symlink"):
        file_entries(model)
    (model / "extra.json").unlink()
    os.mkfifo(model / "pipe")
    with pytest.raises(UsageError, match="pipe is not a regular file"):
        file_entries(model)


# --- model card YAML -------------------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("field", ["license", "base_model"])
def test_an_alias_bomb_in_the_card_is_an_audit_error_not_a_hang(tmp_path, field):
    model = make_model(tmp_path / "m", license=None, card_extra=BOMB + f"{field}: *i\n")
    [result] = isolated(["audit", str(model), "--json"], timeout=120)
    checks = audit_checks(result)
    assert "aliases expand" in checks["card.unreadable"]


# --- pickles under any name ------------------------------------------------------------------------

def _pickles(marker: Path) -> dict[str, bytes]:
    class_bomb = pickle_bomb(marker)
    found = {f"proto{p}": pickle.dumps({"w": [1.0, 2.0], "n": "x"}, protocol=p) for p in range(6)}
    found["proto0-code"] = b"cbuiltins\nopen\n(S'" + str(marker).encode() + b"'\nS'w'\ntR."
    found["proto4-code"] = class_bomb
    return found


def _torch_zip(path: Path, marker: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle_bomb(marker))
        zf.writestr("archive/version", "3\n")


def test_pickles_of_every_protocol_and_torch_zips_are_recognised_and_text_is_not():
    for proto in range(6):
        assert looks_pickled_bytes(pickle.dumps([1, {"a": None}], protocol=proto), whole=True)
    for text in [b'{"model_type": "llama"}', b"---\nlicense: mit\n---\n", b"contents\nmore\n", b"", b"I1\n",
                 Path(__file__).read_bytes(), b"Apache License\nVersion 2.0, January 2004\n"]:
        assert not looks_pickled_bytes(text, whole=True), text[:40]


def test_the_audit_refuses_every_pickle_under_a_suffixless_name(tmp_path):
    marker = tmp_path / "UNPICKLED"
    model = make_model(tmp_path / "m")
    for name, data in _pickles(marker).items():
        (model / name).write_bytes(data)
    _torch_zip(model / "checkpoint", marker)
    result = CliRunner().invoke(cli, ["audit", str(model), "--json"])
    assert result.exit_code == 1 and not marker.exists()
    refused = sorted(f["message"].split()[0] for f in json.loads(result.stdout)["findings"]
                     if f["check"] == "format.pickle" and f["severity"] == "error")
    assert refused == sorted([*_pickles(marker), "checkpoint"])


@pytest.fixture(scope="module")
def loadable(tiny_zoo, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loadable") / "base"
    shutil.copytree(Path(tiny_zoo) / "models" / "base", out)
    return out


def test_calibrate_refuses_a_dir_holding_any_pickle_before_loading(loadable, tiny_zoo, tmp_path):
    marker = tmp_path / "UNPICKLED"
    data = Path(tiny_zoo) / "domains" / "sort" / "train.jsonl"
    cases = {**_pickles(marker), "zip": None}
    commands = []
    for name, payload in cases.items():
        model = tmp_path / name
        shutil.copytree(loadable, model)
        target = model / "weights"
        _torch_zip(target, marker) if payload is None else target.write_bytes(payload)
        if name == "proto4-code":  # pickle-only: what transformers would otherwise open
            (model / "model.safetensors").unlink()
            target.rename(model / "pytorch_model.bin")
        commands.append(["calibrate", str(model), "--data", str(data), "--kind", "fisher",
                         "--out", str(tmp_path / f"{name}.safetensors"), "--samples", "1"])
    for name, result in zip(cases, isolated(*commands)):
        assert "is a pickle" in one_error(result, 2), name
        assert not (tmp_path / f"{name}.safetensors").exists()
    assert not marker.exists()


def test_evaluate_refuses_a_dir_holding_a_pickle_before_loading(loadable, tiny_zoo, tmp_path):
    marker = tmp_path / "UNPICKLED"
    model = tmp_path / "m"
    shutil.copytree(loadable, model)
    (model / "notes").write_bytes(_pickles(marker)["proto0-code"])
    out = tmp_path / "report.json"
    [result] = isolated(["evaluate", str(model), "--zoo", str(tiny_zoo), "--suite", "zoo", "--json", str(out),
                         "--cache-dir", str(tmp_path / "cache")])
    assert "notes is a pickle" in one_error(result, 2)
    assert not out.exists() and not marker.exists()


# --- tokenizer.json --------------------------------------------------------------------------------

def test_a_tokenizer_without_a_vocabulary_is_a_compatibility_error(tmp_path):
    model = make_model(tmp_path / "m")
    (model / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordLevel"}, "added_tokens": []}))
    with pytest.raises(CompatibilityError, match="has no vocabulary"):
        read_vocab(model)
