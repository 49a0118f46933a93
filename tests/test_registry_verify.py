"""`mergeops verify`: re-merge from the lineage, bit for bit, with real tiny zoo parents."""

from __future__ import annotations

import hashlib
import shutil

import pytest
from click.testing import CliRunner

from flows.cli import cli
from merge.recipe import parse_recipe
from merge.run import run_merge
from registry import mlflow_registry as reg
from registry.audit_log import AuditLog
from registry.errors import VerifyMismatch
from registry.keys import load_signing_key
from registry.lineage import build_lineage
from registry.verify import verify_version

RECIPE = "merge_method: linear\nname: verify-demo\nseed: 0\nmodels:\n  - model: base\n    parameters: {{weight: {w}}}\n" \
         "  - model: sort\n    parameters: {{weight: {rest}}}\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("verify-home")
    return {"home": home, "uri": f"sqlite:///{home / 'mlflow.db'}", "artifacts": (home / "mlartifacts").as_uri(),
            "log": home / "audit-log.jsonl",
            "key": load_signing_key(home / "keys" / "signing-key.pem", create=True)}  # where the CLI finds it


def _register(store, tmp_path, tiny_zoo, name, *, lineage_weight=0.5):
    """Merge base+sort 0.5/0.5 from private copies; record ``lineage_weight`` as the recipe's weight."""
    for model in ("base", "sort"):
        shutil.copytree(tiny_zoo / "models" / model, tmp_path / model)
    merged = run_merge(parse_recipe(RECIPE.format(w=0.5, rest=0.5), tmp_path), tmp_path / "out", progress=False)
    text = RECIPE.format(w=lineage_weight, rest=1 - lineage_weight)
    audit = {"verdict": "pass", "effective_license": "apache-2.0", "obligations": [],
             "parents": [{"path": p["path"], "content_id": p["content_id"], "license": "apache-2.0",
                          "verdict": "pass"} for p in merged.parents]}
    record = build_lineage(name=name, recipe_text=text, recipe_sha256=hashlib.sha256(text.encode()).hexdigest(),
                           recipe_base_dir=tmp_path, merge_manifest={**merged.manifest, "parents": merged.parents},
                           audit_report=audit, requested_by="alice")
    return reg.register_candidate(tracking_uri=store["uri"], name=name, model_dir=merged.out_dir, lineage=record,
                                  audit_log_path=store["log"], artifact_location=store["artifacts"],
                                  signing_key=store["key"])


def _cli(store, *args):
    env = {"MERGEOPS_HOME": str(store["home"]), "MLFLOW_TRACKING_URI": store["uri"]}
    return CliRunner().invoke(cli, list(args), env=env)


def test_verify_reproduces_then_refuses_a_changed_parent(store, tmp_path, tiny_zoo):
    info = _register(store, tmp_path, tiny_zoo, "verify-ok")
    result = verify_version(store["uri"], f"verify-ok@{info.version}", audit_log_path=store["log"],
                            public_key=store["key"].public)
    assert result.content_id == info.tag("content_id")
    last = AuditLog(store["log"]).entries()[-1]
    assert (last["event"], last["data"]["outcome"]) == ("verified", "reproduced")
    ok = _cli(store, "verify", "verify-ok@candidate")
    assert ok.exit_code == 0 and "reproduced bit for bit" in ok.output

    weights = tmp_path / "sort" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(VerifyMismatch, match=r"parent sort \(content [0-9a-f]{16}\): .*/sort now holds content "
                                             r"[0-9a-f]{16}; put its recorded bytes back at .*/sort to verify"):
        verify_version(store["uri"], f"verify-ok@{info.version}", audit_log_path=store["log"],
                       public_key=store["key"].public)
    bad = _cli(store, "verify", f"verify-ok@{info.version}")  # the CLI looks in the artifact store, which has none
    assert bad.exit_code == 1 and "parent sort" in bad.output and "does not version it" in bad.output
    assert reg.get_version(store["uri"], "verify-ok", info.version).tag("verify") == "mismatch"


def test_verify_names_the_files_that_differ(store, tmp_path, tiny_zoo):
    info = _register(store, tmp_path, tiny_zoo, "verify-lies", lineage_weight=0.25)
    with pytest.raises(VerifyMismatch, match=r"not reproduced.*changed: model\.safetensors") as exc:
        verify_version(store["uri"], f"verify-lies@{info.version}", audit_log_path=store["log"],
                       public_key=store["key"].public)
    assert "config.json" not in str(exc.value)


def test_verify_in_a_fresh_process(store, tmp_path, tiny_zoo):
    """The auditor's case: verify runs months later in another process (another str hash seed)."""
    import os
    import subprocess
    import sys

    info = _register(store, tmp_path, tiny_zoo, "verify-fresh")
    env = {**os.environ, "MERGEOPS_HOME": str(store["home"]), "MLFLOW_TRACKING_URI": store["uri"],
           "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "verify", f"verify-fresh@{info.version}"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reproduced bit for bit" in proc.stdout


def test_verify_refuses_an_edited_registered_artifact(store, tmp_path, tiny_zoo):
    from pathlib import Path
    from urllib.parse import urlparse

    info = _register(store, tmp_path, tiny_zoo, "verify-edited")
    config = Path(urlparse(info.source).path) / "config.json"
    config.write_text(config.read_text().replace("}", ', "edited": true}', 1))
    with pytest.raises(VerifyMismatch, match="changed: config.json"):
        verify_version(store["uri"], f"verify-edited@{info.version}", audit_log_path=store["log"],
                       public_key=store["key"].public)
