"""The audit log's hash chain catches an edited, deleted or reordered entry and names the line."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from registry.audit_log import GENESIS, AuditLog
from registry.errors import AuditLogTampered, RegistryError


def _log(tmp_path, n=4):
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append("approved", model="m", version=str(i), reviewer="bob")
    return log


def _lines(log):
    return log.path.read_bytes().splitlines(keepends=True)


def test_chain_links_each_entry_to_the_previous(tmp_path):
    log = _log(tmp_path)
    entries = log.entries()
    assert [e["seq"] for e in entries] == [1, 2, 3, 4]
    assert entries[0]["prev"] == GENESIS
    assert [e["prev"] for e in entries[1:]] == [e["hash"] for e in entries[:-1]]
    assert log.verify() == (4, entries[-1]["hash"])


def test_edited_line_is_named(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    lines[1] = lines[1].replace(b'"reviewer":"bob"', b'"reviewer":"eve"')
    log.path.write_bytes(b"".join(lines))
    with pytest.raises(AuditLogTampered, match=r"audit.jsonl:2: entry hash"):
        log.verify()


def test_edit_with_recomputed_hash_is_caught_by_the_next_line(tmp_path):
    from registry.audit_log import _entry_hash

    log = _log(tmp_path)
    lines = _lines(log)
    entry = json.loads(lines[1])
    entry["data"]["reviewer"] = "eve"
    entry["hash"] = _entry_hash(entry)
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    log.path.write_bytes(b"".join(lines))
    with pytest.raises(AuditLogTampered, match=r"audit.jsonl:3: previous-entry hash"):
        log.verify()


def test_deleted_line_is_named(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    del lines[1]
    log.path.write_bytes(b"".join(lines))
    with pytest.raises(AuditLogTampered, match=r"audit.jsonl:2: holds entry seq 3"):
        log.verify()


def test_reordered_lines_are_named(tmp_path):
    log = _log(tmp_path)
    lines = _lines(log)
    lines[1], lines[2] = lines[2], lines[1]
    log.path.write_bytes(b"".join(lines))
    with pytest.raises(AuditLogTampered, match=r"audit.jsonl:2: .*deleted or reordered"):
        log.verify()


def test_truncated_tail_is_caught_by_an_anchor(tmp_path):
    log = _log(tmp_path)
    last = log.entries()[-1]
    log.path.write_bytes(b"".join(_lines(log)[:-1]))
    assert log.verify() == (3, log.entries()[-1]["hash"])  # the chain alone cannot tell
    with pytest.raises(AuditLogTampered, match="records entry 4"):
        log.verify(anchors=[(4, last["hash"], "MLflow m v3")])


def test_unknown_event_is_refused(tmp_path):
    with pytest.raises(RegistryError, match="unknown audit-log event"):
        AuditLog(tmp_path / "a.jsonl").append("deleted")


def _writer(path, who):
    log = AuditLog(path)
    for i in range(25):
        log.append("verified", who=who, i=i)


def test_concurrent_writers_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    procs = [multiprocessing.get_context("fork").Process(target=_writer, args=(path, w)) for w in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert AuditLog(path).verify()[0] == 50


def test_append_refuses_to_chain_onto_a_garbled_last_line(tmp_path):
    log = _log(tmp_path, n=2)
    log.path.write_bytes(log.path.read_bytes() + b'{"seq":3,"ev\n')
    with pytest.raises(AuditLogTampered, match=r"audit.jsonl:3: unreadable entry"):
        log.append("approved", model="m")
