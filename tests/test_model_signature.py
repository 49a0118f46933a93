"""Model signatures against a real MLflow sqlite store: signed at registration, checked at promote
and verify, and the attack a manifest cannot catch (weights, manifest, lineage and tags all
rewritten to agree) refused by name."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
from test_lineage import make_lineage, write_model

from merge.manifest import MANIFEST_NAME, content_id_of, file_entries
from registry import approvals
from registry import mlflow_registry as reg
from registry.errors import SignatureInvalid, VerifyMismatch
from registry.keys import load_signing_key
from registry.model_files import diff_files
from registry.model_signature import MAX_BUNDLE, check_model_signature, sign_model
from registry.verify import verify_version

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("signing-home")
    return {"home": home, "uri": f"sqlite:///{home / 'mlflow.db'}", "artifacts": (home / "mlartifacts").as_uri(),
            "log": home / "audit-log.jsonl",
            "key": load_signing_key(home / "keys" / "signing-key.pem", create=True),  # where the CLI finds it
            "other": load_signing_key(tmp_path_factory.mktemp("elsewhere") / "other.pem", create=True)}


def _approved(store, tmp_path, *, key=None):
    """A registered version, approved by someone other than its requester (promote's last check left)."""
    record, merged = make_lineage(tmp_path / uuid.uuid4().hex[:6])
    info = reg.register_candidate(tracking_uri=store["uri"], name=f"s-{uuid.uuid4().hex[:8]}", model_dir=merged,
                                  lineage=record, audit_log_path=store["log"], artifact_location=store["artifacts"],
                                  signing_key=key or store["key"])
    approvals.approve(store["uri"], info.name, info.version, reviewer="bob", audit_log_path=store["log"])
    return reg.get_version(store["uri"], info.name, info.version)


def _promote(store, info):
    return approvals.promote(store["uri"], info.name, info.version, by="carol", audit_log_path=store["log"],
                             public_key=store["key"].public)


def _run_dir(info) -> Path:
    """The run's artifact folder: the sqlite store's artifacts are plain files."""
    return Path(urlparse(info.source).path).parent


def _check(store, info):
    reg.check_model_artifact(store["uri"], info, reg.load_lineage(store["uri"], info), public_key=store["key"].public)


def _signed_files(bundle: bytes) -> set[str]:
    statement = json.loads(base64.b64decode(json.loads(bundle)["dsseEnvelope"]["payload"]))
    return {r["name"] for r in statement["predicate"]["resources"]}


def test_a_registered_version_is_signed_over_every_model_file(store, tmp_path):
    info = _approved(store, tmp_path)
    assert info.tag("signature_key_id") == store["key"].key_id
    bundle = (_run_dir(info) / "model_signature" / "model.sig").read_bytes()
    model = _run_dir(info) / "model"
    assert _signed_files(bundle) == {p.name for p in model.iterdir()} == {
        "config.json", "model.safetensors", MANIFEST_NAME, "README.md", "LICENSE", "NOTICE"}
    check_model_signature(model, bundle, store["key"].public, "v")  # no exception: it verifies
    assert "champion" in _promote(store, info).aliases


def forge_artifacts(run: Path, lineage, attacker: Path) -> tuple[str, bytes]:
    """Other weights in ``run``'s model, and its manifest and lineage.json rewritten to agree with
    them; returns the forged content id and lineage bytes (for the tags an attacker sets too)."""
    model = run / "model"
    other = write_model(attacker, 99)
    shutil.copyfile(other / "model.safetensors", model / "model.safetensors")
    release = {e.path for e in lineage.release_files}
    files = [e for e in file_entries(model) if e.path not in release]
    manifest = json.loads((model / MANIFEST_NAME).read_text())
    manifest |= {"content_id": content_id_of(files), "files": [e.model_dump() for e in files]}
    (model / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    forged = lineage.model_copy(update={"merged": lineage.merged.model_copy(
        update={"content_id": manifest["content_id"], "files": files})})
    data = forged.to_json_bytes()
    (run / "lineage.json").write_bytes(data)
    return manifest["content_id"], data


def _rewrite_consistently(store, info, tmp_path) -> None:
    """The attack: other weights, and the manifest, lineage.json and tags rewritten to agree with them."""
    cid, data = forge_artifacts(_run_dir(info), reg.load_lineage(store["uri"], info), tmp_path / "attacker")
    reg.set_tags(store["uri"], info, {"content_id": cid, "lineage_sha256": hashlib.sha256(data).hexdigest()})


def test_rewritten_weights_manifest_lineage_and_tags_are_refused_at_promote(store, tmp_path):
    info = _approved(store, tmp_path)
    registered = info.tag("content_id")
    _rewrite_consistently(store, info, tmp_path)
    info = reg.get_version(store["uri"], info.name, info.version)
    # every check before the signature now agrees with the forged bytes ...
    lineage = reg.load_lineage(store["uri"], info)
    model = _run_dir(info) / "model"
    diff_files([*lineage.merged.files, *lineage.release_files], file_entries(model), where="forged")
    assert lineage.merged.content_id == info.tag("content_id") != registered
    # ... and the signature does not
    with pytest.raises(SignatureInvalid, match=r"does not match its model signature \(changed: mergeops\.manifest\."
                                               r"json, model\.safetensors\)") as err:
        _promote(store, info)
    assert "\n" not in str(err.value)
    assert "champion" not in reg.get_version(store["uri"], info.name, info.version).aliases
    with pytest.raises(VerifyMismatch, match="model signature"):
        verify_version(store["uri"], f"{info.name}@{info.version}", audit_log_path=store["log"],
                       public_key=store["key"].public)


def test_a_signature_by_another_key_is_refused(store, tmp_path):
    other, trusted = store["other"].key_id, store["key"].key_id
    signed_elsewhere = _approved(store, tmp_path, key=store["other"])
    with pytest.raises(SignatureInvalid, match=rf"is by key {other} \(as tagged at registration\), not the trusted "
                                               f"key {trusted}"):
        _promote(store, signed_elsewhere)
    # forged files re-signed with the attacker's own key, the tag claiming the trusted one: still refused
    info = _approved(store, tmp_path)
    _rewrite_consistently(store, info, tmp_path)
    (_run_dir(info) / "model_signature" / "model.sig").write_bytes(sign_model(_run_dir(info) / "model", store["other"]))
    reg.set_tags(store["uri"], info, {"signature_key_id": trusted})
    with pytest.raises(SignatureInvalid, match=f"is by another key, not the trusted key {trusted}"):
        _promote(store, reg.get_version(store["uri"], info.name, info.version))


def test_a_version_registered_without_a_signature_is_refused(store, tmp_path):
    info = _approved(store, tmp_path)
    shutil.rmtree(_run_dir(info) / "model_signature")  # as a version registered before signing existed
    with pytest.raises(SignatureInvalid) as err:
        _promote(store, info)
    assert str(err.value) == (f"{info.name} v{info.version} model artifact: registered without a model signature; "
                              "run its recipe again to register a signed version")


@pytest.fixture(scope="module")
def signed(store, tmp_path_factory):
    """One signed version shared by the cases that swap its signature (each puts it back)."""
    return _approved(store, tmp_path_factory.mktemp("signed"))


@pytest.mark.parametrize("garbage", [
    b"not json at all", b"{}", b"[" * 50_000, b"\xff\xfe\x00",
    b'{"verificationMaterial": {"publicKey": {"hint": 7}}}',
    b"x" * (MAX_BUNDLE + 1), b" " * (16 * MAX_BUNDLE),
], ids=["text", "empty-object", "deep", "binary", "odd-hint", "just-over", "huge"])
def test_a_garbage_or_huge_signature_is_refused_in_one_line(store, signed, garbage):
    info = signed
    sig = _run_dir(info) / "model_signature" / "model.sig"
    good = sig.read_bytes()
    sig.write_bytes(garbage)
    try:
        with pytest.raises(SignatureInvalid) as err:
            _check(store, info)
    finally:
        sig.write_bytes(good)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300
    assert "model signature" in str(err.value)
    _check(store, info)  # and with its own signature back, it verifies


def test_an_edited_signed_statement_does_not_verify(store, signed):
    """The right key hint, a well-formed bundle, a statement edited after signing: the ECDSA check fails."""
    info = signed
    sig = _run_dir(info) / "model_signature" / "model.sig"
    good = sig.read_bytes()
    doc = json.loads(good)
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    sig.write_text(json.dumps(doc))
    try:
        with pytest.raises(SignatureInvalid, match=f"does not verify with the trusted key {store['key'].key_id}"):
            _check(store, info)
    finally:
        sig.write_bytes(good)


def test_signing_and_checking_open_no_connection(tmp_path, monkeypatch, store):
    attempts = []

    def refuse(what):
        def guard(*args, **kwargs):
            attempts.append((what, args[:2]))
            raise OSError(f"no network here: {what}")
        return guard

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse(name))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    model = write_model(tmp_path / "m", 5)
    bundle = sign_model(model, store["key"])
    check_model_signature(model, bundle, store["key"].public, "m")
    (model / "config.json").write_text("{}")
    with pytest.raises(SignatureInvalid, match=r"changed: config\.json"):
        check_model_signature(model, bundle, store["key"].public, "m")
    assert attempts == []


def test_cli_promote_refuses_the_forgery_offline_and_honours_a_pinned_key(store, tmp_path):
    forged = _approved(store, tmp_path)
    _rewrite_consistently(store, forged, tmp_path)
    net_log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MERGEOPS_", "MLFLOW_"))}
    env |= {"MERGEOPS_HOME": str(store["home"]), "MLFLOW_TRACKING_URI": store["uri"],
            "PYTHONPATH": f"{REPO / 'tests' / 'netguard'}:{REPO}", "MERGEOPS_NETGUARD_LOG": str(net_log)}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "promote", forged.name, forged.version, "--by", "carol"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model signature" in lines[0], proc.stderr
    assert not net_log.exists(), net_log.read_text()

    # a pinned key that is not the store's: a well-signed version is refused (the log it is decided by
    # is signed by the store's key, so the first check to say no is the log's)
    from click.testing import CliRunner

    from flows.cli import cli

    good = _approved(store, tmp_path)
    pinned = CliRunner().invoke(cli, ["promote", good.name, good.version, "--by", "carol"],
                                env={"MERGEOPS_HOME": str(store["home"]), "MLFLOW_TRACKING_URI": store["uri"],
                                     "MERGEOPS_SERVICE_PUBLIC_KEY": store["other"].public.decode()})
    assert pinned.exit_code == 1 and "does not match the trusted key" in pinned.output, pinned.output
