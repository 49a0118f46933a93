"""Governance decided by the signed audit log, on an embedded store (the same rules the governance
service applies for authenticated users: tests/stack/test_governance_server.py)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import uuid

import pytest
from test_lineage import RECIPE, make_lineage

from merge.errors import UsageError
from registry import approvals
from registry import mlflow_registry as reg
from registry.audit_log import AuditLog
from registry.errors import ApprovalRefused, AuditLogTampered
from registry.identity import Actor, normalise, same_person
from registry.keys import load_signing_key
from registry.lineage import SettingsRecord


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("governance-home")
    return {"home": home, "uri": f"sqlite:///{home / 'mlflow.db'}", "artifacts": (home / "mlartifacts").as_uri(),
            "log": home / "audit-log.jsonl", "key": load_signing_key(home / "keys" / "signing-key.pem", create=True)}


def _register(store, tmp_path, *, recipe_extra: str = "", policy: str | None = None) -> reg.VersionInfo:
    record, merged = make_lineage(tmp_path / uuid.uuid4().hex[:6], requested_by="alice")
    update = {}
    if recipe_extra:
        update["recipe"] = record.recipe.model_copy(update={"text": RECIPE + recipe_extra})
    if policy is not None:
        sha = hashlib.sha256(policy.encode()).hexdigest()
        update["policy"] = SettingsRecord(name="p", source="policy.yaml", text=policy, sha256=sha, digest=sha)
    return reg.register_candidate(tracking_uri=store["uri"], name=f"g-{uuid.uuid4().hex[:8]}", model_dir=merged,
                                  lineage=record.model_copy(update=update), audit_log_path=store["log"],
                                  artifact_location=store["artifacts"], signing_key=store["key"])


def _approve(store, info, who, **kw):
    return approvals.approve(store["uri"], info.name, info.version, reviewer=who, audit_log_path=store["log"], **kw)


def test_ids_are_compared_normalised():
    assert normalise("\uff21lice") == normalise("alice\u200b") == normalise(" ALICE ") == "alice"
    assert normalise("\u0430\u0441\u0435") == "ace"  # all-Cyrillic look-alikes read as the Latin letters
    assert same_person("Bob@Example.com", "bob@example.com") and not same_person("bob", "rob")
    with pytest.raises(UsageError, match="mixes Cyrillic and Latin letters"):
        normalise("al\u0456ce")
    with pytest.raises(UsageError, match="empty"):
        normalise("\u200b\u200d")
    with pytest.raises(UsageError, match="control or separator"):
        normalise("ali\x00ce")


@pytest.mark.parametrize("spelling", ["alice", "Alice", "alice\u200b", "\uff41lice", "\u202ealice"])
def test_the_requester_cannot_approve_under_any_spelling(store, tmp_path, spelling):
    info = _register(store, tmp_path)
    with pytest.raises(ApprovalRefused, match="four-eyes"):
        _approve(store, info, spelling)
    with pytest.raises(UsageError, match="mixes"):
        _approve(store, info, "al\u0456ce")
    assert approvals.state(AuditLog(store["log"]).entries(), info.name, info.version) == "pending"


def test_a_commercial_version_needs_an_authenticated_reviewer(store, tmp_path):
    info = _register(store, tmp_path, recipe_extra="intended_use: commercial\n")
    with pytest.raises(ApprovalRefused, match="requires an authenticated reviewer"):
        _approve(store, info, "bob")
    # the policy can say so for research use too, and name who reviews
    strict = _register(store, tmp_path, policy="approval:\n  reviewers: [carol]\n")
    with pytest.raises(ApprovalRefused, match=r"bob is not a reviewer under its policy \(approval.reviewers: carol\)"):
        _approve(store, strict, "bob")
    _approve(store, strict, "Carol")
    # an authenticated id (as the governance service passes it) is accepted for the commercial one
    _approve(store, info, Actor("bob", authenticated=True))
    entry = approvals.decision_entry(AuditLog(store["log"]).entries(), info.name, info.version)
    assert (entry["actor"], entry["authenticated"], entry["event"]) == ("bob", True, "approved")


def _decide_in_process(args):
    uri, log, name, version, who, decision = args
    try:
        act = approvals.approve if decision == "approve" else approvals.reject
        act(uri, name, version, reviewer=who, comment="race", audit_log_path=log)
        return decision
    except ApprovalRefused as exc:
        return f"refused: {exc}"


def test_racing_approve_and_reject_give_one_decision(store, tmp_path):
    infos = [_register(store, tmp_path) for _ in range(5)]
    jobs = []
    for info in infos:
        jobs += [(store["uri"], store["log"], info.name, info.version, "bob", "approve"),
                 (store["uri"], store["log"], info.name, info.version, "carol", "reject")]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        outcomes = pool.map(_decide_in_process, jobs)
    entries = AuditLog(store["log"]).entries()
    for i, info in enumerate(infos):
        pair = outcomes[2 * i: 2 * i + 2]
        assert sum(not o.startswith("refused") for o in pair) == 1, pair
        decided = [e for e in entries if e["event"] in ("approved", "rejected") and e["data"]["model"] == info.name]
        assert len(decided) == 1
        assert reg.get_version(store["uri"], info.name, info.version).tag("approval") == decided[0]["event"]


def test_forged_tags_and_aliases_are_named_and_do_not_promote(store, tmp_path):
    info = _register(store, tmp_path)
    reg.verify_audit_log(store["uri"], store["log"])
    reg.set_tags(store["uri"], info, {"approval": "approved", "decided_by": "bob"})
    reg.set_alias(store["uri"], info, "champion")
    with pytest.raises(AuditLogTampered) as found:
        reg.verify_audit_log(store["uri"], store["log"])
    assert f"{info.name} v{info.version}: tag mergeops.approval is 'approved', the log says 'pending'" in str(found.value)
    assert f"{info.name}: alias champion is v{info.version}, the log promoted nothing" in str(found.value)
    with pytest.raises(ApprovalRefused, match="holds no approval"):
        approvals.promote(store["uri"], info.name, info.version, by="carol", audit_log_path=store["log"])
    reg.set_tags(store["uri"], info, {"approval": "pending"})
    reg.client(store["uri"]).delete_model_version_tag(info.name, info.version, "mergeops.decided_by")
    reg.client(store["uri"]).delete_registered_model_alias(info.name, "champion")
    reg.verify_audit_log(store["uri"], store["log"])


def test_an_approval_adds_a_lineage_revision_and_keeps_the_first(store, tmp_path):
    info = _register(store, tmp_path)
    first = reg.lineage_bytes(store["uri"], info)
    _approve(store, info, "bob", comment="reviewed")
    assert reg.lineage_bytes(store["uri"], info) == first
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        revised = json.loads(reg.download(store["uri"], info, "lineage-revisions/lineage.r2.json", Path(tmp)).read_text())
    assert [(a["decision"], a["reviewer"], a["comment"]) for a in revised["approvals"]] == [("approved", "bob", "reviewed")]
    promoted = approvals.promote(store["uri"], info.name, info.version, by="carol", audit_log_path=store["log"])
    assert "champion" in promoted.aliases
    reg.verify_audit_log(store["uri"], store["log"])


def test_unsigned_or_foreign_entries_are_forgeries(store, tmp_path):
    _register(store, tmp_path)
    log = store["log"]
    original = log.read_bytes()
    public = store["key"].public
    try:
        eve = AuditLog(log, key=load_signing_key(tmp_path / "eve.pem", create=True))
        eve.append("approved", actor=Actor("bob"), model="x", version="1")
        with pytest.raises(AuditLogTampered, match="does not match the trusted key"):
            AuditLog(log, public=public).verify()
        log.write_bytes(original)
        # a correctly chained entry with no signature at all
        last = json.loads(original.splitlines()[-1])
        from merge.manifest import canonical_json
        entry = {"seq": last["seq"] + 1, "at": last["at"], "event": "approved", "actor": "bob", "authenticated": False,
                 "data": {"model": "x", "version": "1"}, "prev": last["hash"], "key_id": last["key_id"]}
        entry["hash"] = hashlib.sha256(canonical_json(entry)).hexdigest()
        log.write_bytes(original + canonical_json(entry) + b"\n")
        with pytest.raises(AuditLogTampered, match="unsigned entry after signed ones"):
            AuditLog(log, public=public).verify()
    finally:
        log.write_bytes(original)


def test_a_truncated_log_whose_mlflow_copy_was_deleted_is_named(store, tmp_path):
    """Truncating the log and deleting MLflow's copy of its entries leaves versions the log never
    registered: `log verify` names each one."""
    home = tmp_path / "home"
    home.mkdir()
    log, uri = home / "audit-log.jsonl", f"sqlite:///{home / 'mlflow.db'}"
    record, merged = make_lineage(tmp_path / "m", requested_by="alice")
    info = reg.register_candidate(tracking_uri=uri, name="truncated", model_dir=merged, lineage=record,
                                  audit_log_path=log, artifact_location=(home / "art").as_uri(), signing_key=store["key"])
    reg.verify_audit_log(uri, log)
    log.write_bytes(b"")  # truncated ...
    c = reg.client(uri)
    for key in [k for k in c.get_model_version("truncated", info.version).tags if k.startswith("mergeops.log.")]:
        c.delete_model_version_tag("truncated", info.version, key)  # ... and its MLflow copy deleted
    for key in [k for k in c.get_registered_model("truncated").tags if k.startswith("mergeops.log.")]:
        c.delete_registered_model_tag("truncated", key)
    with pytest.raises(AuditLogTampered) as found:
        reg.verify_audit_log(uri, log)
    assert f"truncated v{info.version}: in MLflow without a `registered` entry in the log" in str(found.value)


def test_the_prefect_form_cannot_decide_when_there_is_a_governance_service(monkeypatch):
    """The form's Reviewer field is free text: with a service, only a signed-in `mergeops approve` decides."""
    from flows import approval

    monkeypatch.setenv("MERGEOPS_SERVICE_URL", "http://127.0.0.1:9")  # never contacted
    with pytest.raises(UsageError, match="the Prefect form is not authenticated"):
        approval.decide("any-model", "1", "bob", "approve", "looks fine")
