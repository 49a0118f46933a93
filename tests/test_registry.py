"""Registration, four-eyes approvals, promotion and the CLI against a real MLflow sqlite store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner
from test_lineage import make_lineage

from flows.cli import cli
from registry import approvals
from registry import mlflow_registry as reg
from registry.audit_log import AuditLog
from registry.errors import ApprovalRefused, ArtifactMismatch, AuditLogTampered, LineageError
from registry.keys import load_signing_key


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """One sqlite store per module (creating its tables takes seconds); tests use their own names."""
    home = tmp_path_factory.mktemp("mergeops-home")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    key = load_signing_key(home / "keys" / "signing-key.pem", create=True)  # where the CLI finds it
    return {"home": home, "uri": uri, "artifacts": (home / "mlartifacts").as_uri(),
            "log": home / "audit-log.jsonl", "key": key}


def _register(store, tmp_path, *, gates_pass=True, requested_by="alice", name=None):
    record, merged = make_lineage(tmp_path / uuid.uuid4().hex[:6], gates_pass=gates_pass, requested_by=requested_by)
    (tmp_path / "eval.json").write_text("{}")
    info = reg.register_candidate(
        tracking_uri=store["uri"], name=name or f"m-{uuid.uuid4().hex[:8]}", model_dir=merged, lineage=record,
        audit_log_path=store["log"], evaluation_files=[tmp_path / "eval.json"], artifact_location=store["artifacts"],
        signing_key=store["key"])
    return info, record


def _run(store, *args):
    env = {"MERGEOPS_HOME": str(store["home"]), "MLFLOW_TRACKING_URI": store["uri"]}
    return CliRunner().invoke(cli, list(args), env=env)


def test_register_logs_run_version_tags_and_alias(store, tmp_path):
    info, record = _register(store, tmp_path)
    assert info.aliases == ("candidate",)
    assert info.source.endswith(f"{info.run_id}/artifacts/model")
    assert info.tag("content_id") == record.merged.content_id
    assert info.tag("parents") == ",".join(p.content_id for p in record.parents)
    assert info.tag("parent.1.license") == "apache-2.0"
    assert (info.tag("gate_verdict"), info.tag("leakage_verdict"), info.tag("approval")) == ("pass", "pass", "pending")
    assert (info.tag("recipe_sha256"), info.tag("dvc_rev")) == (record.recipe.sha256, "abc123")
    c = reg.client(store["uri"])
    run = c.get_run(info.run_id)
    assert run.data.params["seed"] == "7" and run.data.params["method"] == "linear"
    assert run.data.metrics["score.sort"] == 0.9 and run.data.metrics["leakage.canary_exposure.merged"] == 0.0
    top = {a.path for a in c.list_artifacts(info.run_id)}
    assert top == {"model", "model_signature", "lineage.json", "model_card", "evaluation"}
    assert info.tag("signature_key_id") == store["key"].key_id
    assert {a.path for a in c.list_artifacts(info.run_id, "model")} == {
        "model/config.json", "model/model.safetensors", "model/mergeops.manifest.json",
        "model/README.md", "model/LICENSE", "model/NOTICE"}
    last = AuditLog(store["log"]).entries()[-1]
    assert (last["event"], last["data"]["model"]) == ("registered", info.name)
    assert info.tag(f"log.{last['seq']}") == f"registered:{last['hash']}"
    loaded = reg.load_lineage(store["uri"], info)
    assert [f.path for f in loaded.release_files] == ["README.md", "LICENSE", "NOTICE"]
    assert loaded.model_copy(update={"release_files": []}) == record
    model = reg.download(store["uri"], info, "model", tmp_path / "dl")
    card = (model / "README.md").read_text()
    front = __import__("yaml").safe_load(card.split("---")[1])
    assert front["base_model_relation"] == "merge" and front["tags"] == ["merge", "mergeops"]
    assert front["base_model"] == [p.reference for p in record.parents]
    assert front["license"] == record.audit.effective_license == "apache-2.0"
    assert front["model-index"][0]["results"][0]["metrics"][0]["type"] == "exact_match"
    assert f"Effective licence: {record.audit.effective_license}" in (model / "LICENSE").read_text()
    for obligation in record.audit.obligations:
        assert obligation in (model / "NOTICE").read_text()


def test_a_compound_licence_is_other_on_the_hub_and_named_in_the_card():
    from registry.model_card import _license_meta

    assert _license_meta("apache-2.0") == {"license": "apache-2.0"}
    assert _license_meta("cc-by-nc-4.0 AND apache-2.0") == {
        "license": "other", "license_name": "cc-by-nc-4.0 AND apache-2.0", "license_link": "LICENSE"}


def test_an_edited_model_card_in_the_artifact_store_is_caught(store, tmp_path):
    info, record = _register(store, tmp_path)
    card = Path(urlparse(info.source).path) / "README.md"
    card.write_text(card.read_text().replace("base_model_relation: merge", "base_model_relation: finetune"))
    with pytest.raises(ArtifactMismatch, match="changed: README.md"):
        reg.check_model_artifact(store["uri"], info, reg.load_lineage(store["uri"], info),
                                 public_key=store["key"].public)


def test_register_refuses_a_dir_edited_after_its_manifest(store, tmp_path):
    record, merged = make_lineage(tmp_path)
    (merged / "config.json").write_text("{}")
    with pytest.raises(ArtifactMismatch, match="changed: config.json"):
        reg.register_candidate(tracking_uri=store["uri"], name="never", model_dir=merged, lineage=record,
                               audit_log_path=store["log"], artifact_location=store["artifacts"],
                               signing_key=store["key"])


def test_self_approval_is_refused(store, tmp_path):
    info, _ = _register(store, tmp_path, requested_by="alice")
    with pytest.raises(ApprovalRefused, match="four-eyes"):
        approvals.approve(store["uri"], info.name, info.version, reviewer="Alice", audit_log_path=store["log"])
    assert reg.get_version(store["uri"], info.name, info.version).tag("approval") == "pending"


def test_gate_failed_version_cannot_be_approved(store, tmp_path):
    info, _ = _register(store, tmp_path, gates_pass=False)
    assert info.tag("gate_verdict") == "fail"
    with pytest.raises(ApprovalRefused, match="gate_verdict not pass"):
        approvals.approve(store["uri"], info.name, info.version, reviewer="bob", audit_log_path=store["log"])
    # rejecting it is fine, and it is decided once
    approvals.reject(store["uri"], info.name, info.version, reviewer="bob", comment="retention",
                     audit_log_path=store["log"])
    with pytest.raises(ApprovalRefused, match="already rejected by bob"):
        approvals.approve(store["uri"], info.name, info.version, reviewer="carol", audit_log_path=store["log"])


def test_unapproved_version_cannot_be_promoted(store, tmp_path):
    info, _ = _register(store, tmp_path)
    with pytest.raises(ApprovalRefused, match=r"holds no approval for it \(pending\)"):
        approvals.promote(store["uri"], info.name, info.version, by="carol", audit_log_path=store["log"],
                          public_key=store["key"].public)


def test_promotion_moves_champion_and_keeps_history(store, tmp_path):
    name = f"m-{uuid.uuid4().hex[:8]}"
    v1, _ = _register(store, tmp_path / "a", name=name)
    v2, _ = _register(store, tmp_path / "b", name=name)
    for v in (v1, v2):
        approvals.approve(store["uri"], name, v.version, reviewer="bob", comment="ok", audit_log_path=store["log"])
    approvals.promote(store["uri"], name, v1.version, by="carol", audit_log_path=store["log"],
                      public_key=store["key"].public)
    promoted = approvals.promote(store["uri"], name, v2.version, by="carol", audit_log_path=store["log"],
                                 public_key=store["key"].public)
    assert "champion" in promoted.aliases
    old = reg.get_version(store["uri"], name, v1.version)
    assert "champion" not in old.aliases and old.tag("superseded_by") == v2.version
    assert old.tag("promoted_by") == "carol"
    history = reg.model_tags(store["uri"], name)
    assert [json.loads(history[f"mergeops.champion.{n}"])["version"] for n in (1, 2)] == [v1.version, v2.version]
    assert [v.version for v in reg.list_versions(store["uri"], name)] == [v1.version, v2.version]
    assert reg.list_versions(store["uri"], "never-registered") == []
    record = reg.load_lineage(store["uri"], promoted)
    assert [(a.decision, a.reviewer, a.comment) for a in record.approvals] == [("approved", "bob", "ok")]
    events = [e["event"] for e in AuditLog(store["log"]).entries() if e["data"]["model"] == name]
    assert events == ["registered", "registered", "approved", "approved", "promoted", "promoted"]


def test_promotion_refused_after_an_artifact_was_edited(store, tmp_path):
    info, _ = _register(store, tmp_path)
    approvals.approve(store["uri"], info.name, info.version, reviewer="bob", audit_log_path=store["log"])
    weights = Path(urlparse(info.source).path) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactMismatch, match="changed: model.safetensors"):
        approvals.promote(store["uri"], info.name, info.version, by="carol", audit_log_path=store["log"],
                          public_key=store["key"].public)
    assert "champion" not in reg.get_version(store["uri"], info.name, info.version).aliases


def test_cli_lineage_approve_promote_and_exit_codes(store, tmp_path):
    info, record = _register(store, tmp_path)
    name, v = info.name, info.version
    out = _run(store, "lineage", f"{name}@candidate", "--json")
    assert out.exit_code == 0, out.output
    assert out.output.encode() == reg.load_lineage(store["uri"], info).to_json_bytes() + b"\n"
    tree = _run(store, "lineage", f"{name}@{v}")
    assert tree.exit_code == 0 and f"{name} v{v}  [candidate]" in tree.output

    self_approve = _run(store, "approve", name, v, "--reviewer", "alice")
    assert self_approve.exit_code == 1 and "error:" in self_approve.output and "four-eyes" in self_approve.output
    assert _run(store, "reject", name, v, "--reviewer", "bob").exit_code == 2  # --comment is required
    assert _run(store, "promote", name, v, "--by", "carol").exit_code == 1  # not approved
    assert _run(store, "lineage", "no-such-model@1").exit_code == 2
    ok = _run(store, "approve", name, v, "--reviewer", "bob", "--comment", "fine")
    assert ok.exit_code == 0 and "approved by bob" in ok.output
    assert _run(store, "promote", name, v, "--by", "carol").exit_code == 0
    shown = _run(store, "lineage", name)  # no @: the champion
    assert "[candidate, champion]" in shown.output and "approved by bob" in shown.output


def test_cli_log_verify_detects_an_edited_line(store, tmp_path):
    _register(store, tmp_path)
    good = _run(store, "log", "verify")
    assert good.exit_code == 0 and "chain intact" in good.output
    log = store["log"]
    original = log.read_bytes()
    lines = original.splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"registered"', b'"approved"')
    log.write_bytes(b"".join(lines))
    try:
        bad = _run(store, "log", "verify")
        assert bad.exit_code == 1 and "audit-log.jsonl:1:" in bad.output
        log.write_bytes(b"".join(original.splitlines(keepends=True)[:-1]))  # cut the last entry
        cut = _run(store, "log", "verify")
        assert cut.exit_code == 1 and "entries were deleted" in cut.output
    finally:
        log.write_bytes(original)


def test_model_level_events_are_mirrored_and_anchored(store, tmp_path):
    info, _ = _register(store, tmp_path)
    entry = reg.record_event(store["uri"], info.name, None, store["log"], "remerge_triggered", reason="parent changed")
    assert reg.model_tags(store["uri"], info.name)[f"mergeops.log.{entry['seq']}"] == f"remerge_triggered:{entry['hash']}"
    assert reg.verify_audit_log(store["uri"], store["log"])[0] == entry["seq"]
    # the model-level copy is checked: a rewritten copy is named
    reg.set_model_tag(store["uri"], info.name, f"log.{entry['seq']}", f"remerge_triggered:{'0' * 64}")
    with pytest.raises(AuditLogTampered, match=f"differs from the copy in MLflow {info.name}"):
        reg.verify_audit_log(store["uri"], store["log"])
    reg.set_model_tag(store["uri"], info.name, f"log.{entry['seq']}", f"remerge_triggered:{entry['hash']}")


def test_register_refuses_a_lineage_for_other_bytes(store, tmp_path):
    record, _ = make_lineage(tmp_path / "a")
    _, other = make_lineage(tmp_path / "b", merged_seed=9)
    with pytest.raises(LineageError, match="is not the lineage's merged content id"):
        reg.register_candidate(tracking_uri=store["uri"], name="never", model_dir=other, lineage=record,
                               audit_log_path=store["log"], artifact_location=store["artifacts"],
                               signing_key=store["key"])


def test_a_locked_store_is_an_error_not_a_shorter_history(store, tmp_path):
    """`versions` stops at the first missing version number; a store that cannot answer must raise
    instead, or a re-merge would think nothing was registered and register twice."""
    import sqlite3

    from flows.versions import versions
    from registry.errors import RegistryError, VersionNotFound

    info, _ = _register(store, tmp_path)
    assert [v.version for v in versions(store["uri"], info.name)] == [info.version]
    with pytest.raises(VersionNotFound):
        reg.get_version(store["uri"], info.name, 99)
    db = urlparse(store["uri"]).path
    holder = sqlite3.connect(db, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the file
    try:
        with pytest.raises(RegistryError) as err:
            versions(store["uri"], info.name)
        assert not isinstance(err.value, VersionNotFound)
    finally:
        holder.rollback()
        holder.close()
    assert [v.version for v in versions(store["uri"], info.name)] == [info.version]
