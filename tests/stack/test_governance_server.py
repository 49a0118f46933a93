"""Governance on a shared server: a real `mlflow server --app-name basic-auth` with three people and a
service account, and `mergeops serve` as the one writer of governed state.

Each attack a hostile insider tried is replayed here against the real servers, through the CLI
where a person would use the CLI.
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from servers import as_user, decide, governance_service, mergeops, mlflow_basic_auth, register  # noqa: E402

from registry import mlflow_registry as reg  # noqa: E402
from registry.audit_log import AuditLog  # noqa: E402


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("governance")
    with mlflow_basic_auth(root / "mlflow") as mlflow, governance_service(mlflow["uri"], root / "service") as svc:
        yield {**mlflow, **svc, "tmp": root}


def _admin(stack, monkeypatch) -> MlflowClient:
    env = as_user("admin")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
    return MlflowClient(stack["uri"])


def test_the_requester_is_the_signed_in_user_and_cannot_approve_under_any_spelling(stack, monkeypatch):
    version = register(stack, "gov-four-eyes", 3, monkeypatch=monkeypatch)
    entries = AuditLog(stack["log"]).entries()
    registered = [e for e in entries if e["event"] == "registered" and e["data"]["model"] == "gov-four-eyes"]
    # the typed requested_by is replaced by who signed in; the entry is signed by the service's key
    assert registered[0]["actor"] == "alice" and registered[0]["authenticated"] is True and registered[0]["sig"]
    # and the requester holds READ on the governed model, set through MLflow's permission API
    from mlflow.server.auth.client import AuthServiceClient
    _admin(stack, monkeypatch)
    granted = AuthServiceClient(stack["uri"]).get_user_permission("alice", "registered_model", "gov-four-eyes")
    assert granted.permission == "READ"

    for spelling in ("alice", "Alice", "alice\u200b", "\uff41lice", "al\u0456ce"):
        done = mergeops(stack, "alice", "approve", "gov-four-eyes", version, "--reviewer", spelling)
        assert done.returncode in (1, 2), done
        assert done.stderr.count("error:") == 1 and "Traceback" not in done.stderr
    # typing another person's name is refused: decisions are made as the signed-in user
    bob_typed = mergeops(stack, "alice", "approve", "gov-four-eyes", version, "--reviewer", "bob")
    assert bob_typed.returncode == 1 and "you are authenticated as alice" in bob_typed.stderr
    # without a flag, alice is alice: four-eyes
    plain = mergeops(stack, "alice", "approve", "gov-four-eyes", version)
    assert plain.returncode == 1 and "four-eyes" in plain.stderr
    # wrong password: refused by the MLflow server, one line
    wrong = mergeops(stack, "bob", "approve", "gov-four-eyes", version, MLFLOW_TRACKING_PASSWORD="nope")
    assert wrong.returncode == 2 and "refused these credentials" in wrong.stderr

    ok = mergeops(stack, "bob", "approve", "gov-four-eyes", version, "--comment", "retention reviewed")
    assert ok.returncode == 0, ok.stderr
    assert "approved by bob" in ok.stdout
    decided = [e for e in AuditLog(stack["log"]).entries() if e["event"] == "approved"
               and e["data"]["model"] == "gov-four-eyes"]
    assert [(e["actor"], e["authenticated"]) for e in decided] == [("bob", True)]


def test_direct_edits_are_refused_by_the_server_and_admin_forgeries_are_named(stack, monkeypatch):
    version = register(stack, "gov-forgery", 4, monkeypatch=monkeypatch)
    env = as_user("bob")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", env["MLFLOW_TRACKING_USERNAME"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", env["MLFLOW_TRACKING_PASSWORD"])
    bob = MlflowClient(stack["uri"])
    with pytest.raises(MlflowException, match="403|PERMISSION_DENIED|Permission denied"):
        bob.set_model_version_tag("gov-forgery", version, "mergeops.approval", "approved")
    with pytest.raises(MlflowException, match="403|PERMISSION_DENIED|Permission denied"):
        bob.set_registered_model_alias("gov-forgery", "champion", version)

    clean = mergeops(stack, "carol", "log", "verify")
    assert clean.returncode == 0, clean.stderr

    admin = _admin(stack, monkeypatch)
    admin.set_model_version_tag("gov-forgery", version, "mergeops.approval", "approved")
    admin.set_model_version_tag("gov-forgery", version, "mergeops.decided_by", "bob")
    admin.set_registered_model_alias("gov-forgery", "champion", version)
    found = mergeops(stack, "carol", "log", "verify")
    assert found.returncode == 1
    assert f"gov-forgery v{version}: tag mergeops.approval is 'approved', the log says 'pending'" in found.stderr
    assert "gov-forgery: alias champion is v" in found.stderr and "the log promoted nothing" in found.stderr
    refused = mergeops(stack, "carol", "promote", "gov-forgery", version)
    assert refused.returncode == 1 and "holds no approval" in refused.stderr
    # put the mirror back as the log says, so later checks see a clean store
    admin.set_model_version_tag("gov-forgery", version, "mergeops.approval", "pending")
    admin.delete_model_version_tag("gov-forgery", version, "mergeops.decided_by")
    admin.delete_registered_model_alias("gov-forgery", "champion")


def test_tampered_weights_manifest_lineage_and_tags_are_refused_at_promote(stack, monkeypatch):
    import hashlib

    from test_model_signature import forge_artifacts

    version = register(stack, "gov-tamper", 5, monkeypatch=monkeypatch)
    assert mergeops(stack, "bob", "approve", "gov-tamper", version).returncode == 0
    admin = _admin(stack, monkeypatch)
    info = reg.get_version(stack["uri"], "gov-tamper", version)
    signed = {k: info.tag(k) for k in ("content_id", "lineage_sha256")}
    run = next(p for p in stack["artifacts"].rglob(info.run_id) if p.is_dir()) / "artifacts"
    # other weights, and the manifest, lineage.json and tags rewritten to agree with them (an admin's edit)
    cid, forged = forge_artifacts(run, reg.load_lineage(stack["uri"], info), stack["tmp"] / "attacker")
    admin.set_model_version_tag("gov-tamper", version, "mergeops.content_id", cid)
    admin.set_model_version_tag("gov-tamper", version, "mergeops.lineage_sha256", hashlib.sha256(forged).hexdigest())

    refused = mergeops(stack, "carol", "promote", "gov-tamper", version)
    assert refused.returncode == 1, refused
    assert "does not match its model signature" in refused.stderr and refused.stderr.count("\n") == 1
    drift = mergeops(stack, "carol", "log", "verify")
    assert drift.returncode == 1 and "tag mergeops.content_id" in drift.stderr
    assert "champion" not in reg.get_version(stack["uri"], "gov-tamper", version).aliases
    for key, value in signed.items():  # the mirror put back as the log says, for the checks after this one
        admin.set_model_version_tag("gov-tamper", version, f"mergeops.{key}", value)


def test_a_forged_log_entry_is_detected(stack, monkeypatch):
    register(stack, "gov-forged-entry", 6, monkeypatch=monkeypatch)
    log = stack["log"]
    original = log.read_bytes()
    try:
        # a correctly chained entry, signed with a key that is not the service's
        from registry.keys import load_signing_key
        eve = AuditLog(log, key=load_signing_key(stack["tmp"] / "eve.pem", create=True))
        eve.append("approved", actor=None, model="gov-forged-entry", version="1", comment="forged")
        forged = mergeops(stack, "carol", "log", "verify")
        assert forged.returncode == 1 and "signature does not match the trusted key" in forged.stderr
    finally:
        log.write_bytes(original)


def test_racing_approve_and_reject_give_one_decision_each(stack, monkeypatch):
    versions = [register(stack, "gov-race", 100 + i, monkeypatch=monkeypatch) for i in range(20)]
    jobs = []
    for v in versions:
        jobs += [(stack["url"], "bob", "approve", "gov-race", v), (stack["url"], "carol", "reject", "gov-race", v)]
    with ProcessPoolExecutor(max_workers=8, mp_context=get_context("spawn")) as pool:
        outcomes = list(pool.map(decide, jobs))
    for i, v in enumerate(versions):
        pair = outcomes[2 * i: 2 * i + 2]
        assert sum(not o.startswith("refused") for o in pair) == 1, (v, pair)
        assert any("already" in o for o in pair if o.startswith("refused")), pair
    entries = AuditLog(stack["log"]).entries()
    for v in versions:
        decided = [e for e in entries if e["event"] in ("approved", "rejected")
                   and e["data"]["model"] == "gov-race" and e["data"]["version"] == v]
        assert len(decided) == 1
        assert reg.get_version(stack["uri"], "gov-race", v).tag("approval") == decided[0]["event"]
    assert mergeops(stack, "carol", "log", "verify").returncode == 0


def test_verify_of_v1_after_its_parent_moved_on_replays_it_bit_for_bit(stack, tiny_zoo, monkeypatch):
    """A real merge registered through the service; its parent is updated in place; carol's `verify`
    restores the old parent from the DVC store by content id, re-merges, and the service logs it."""
    import hashlib
    import shutil

    from flows.demo import update_parent
    from flows.dvc_store import DvcStore, parent_path
    from merge.manifest import content_id
    from merge.recipe import parse_recipe
    from merge.run import run_merge
    from registry.lineage import build_lineage
    from registry.service_client import submit_registration

    recipe = ("merge_method: linear\nname: replayed\nseed: 0\nmodels:\n  - model: base\n    parameters: {weight: 0.5}\n"
              "  - model: sort\n    parameters: {weight: 0.5}\n")
    root = stack["tmp"] / "replay"
    for model in ("base", "sort"):
        shutil.copytree(tiny_zoo / "models" / model, root / "parents" / model)
    merged = run_merge(parse_recipe(recipe, root / "parents"), root / "merged", progress=False)
    # the team's artifact store, where carol's settings find it (MERGEOPS_HOME of her `mergeops`)
    home = stack["tmp"] / "cwd-carol" / ".mergeops"
    store = DvcStore(home / "store", str(home / "dvc-remote")).ensure()
    store.track({parent_path(p["content_id"]): Path(p["path"]) for p in merged.parents}, "replayed parents")
    store.push()
    audit = {"verdict": "pass", "effective_license": "apache-2.0", "obligations": [],
             "parents": [{"path": p["path"], "content_id": p["content_id"], "license": "apache-2.0",
                          "verdict": "pass"} for p in merged.parents]}
    record = build_lineage(name="replayed", recipe_text=recipe, recipe_sha256=hashlib.sha256(recipe.encode()).hexdigest(),
                           recipe_base_dir=root / "parents", merge_manifest={**merged.manifest, "parents": merged.parents},
                           audit_report=audit, requested_by="typed")
    client = _client_as(stack, "alice", monkeypatch)
    answer = submit_registration(client, stack["uri"], name="replayed", model_dir=merged.out_dir, lineage=record)
    assert (answer["status"], answer["version"]) == ("registered", "1")

    old = content_id(root / "parents" / "sort")
    update_parent(root / "parents" / "sort")
    assert content_id(root / "parents" / "sort") != old
    verified = mergeops(stack, "carol", "verify", "replayed@1")
    assert verified.returncode == 0, verified.stderr
    assert f"parent sort: restored from the store (content {old[:16]})" in verified.stdout
    assert f"replayed v1: reproduced bit for bit" in verified.stdout and merged.content_id[:16] in verified.stdout
    last = AuditLog(stack["log"]).entries()[-1]
    assert (last["event"], last["actor"], last["authenticated"], last["data"]["outcome"]) == (
        "verified", "carol", True, "reproduced")
    assert last["data"]["restored_from_store"] == ["sort"]
    assert reg.get_version(stack["uri"], "replayed", "1").tag("verify") == "reproduced"


def _client_as(stack, user: str, monkeypatch):
    from registry.service_client import ServiceClient

    env = as_user(user)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, env[key])
    return ServiceClient(stack["url"], env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
