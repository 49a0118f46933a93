"""Parents named by Hugging Face repo id, read offline from a local Hub cache laid out on disk the
way huggingface_hub writes it (refs/, snapshots/<commit>/ with links into blobs/)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from flows.cli import cli
from merge.errors import SourceNotFound, UsageError
from merge.hub import display_name, resolve_model, snapshot_of
from merge.manifest import content_id
from merge.recipe import parse_recipe
from merge.run import run_merge
from merge.synthetic import write_llama
from registry.lineage import build_lineage
from registry.model_card import render_model_card

REPO = "acme/tiny-base"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHAPE = dict(hidden=32, layers=2, intermediate=64, vocab=64)


def mirror(model_dir: Path, cache: Path, repo_id: str, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay ``model_dir`` out as huggingface_hub caches a download: blobs named by their sha256,
    relative symlinks in snapshots/<commit>/, and each ref file holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for src in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = src.relative_to(model_dir)
        blob = hashlib.sha256(src.read_bytes()).hexdigest()
        shutil.copyfile(src, repo / "blobs" / blob)
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / rel).symlink_to(Path(*[".."] * (len(rel.parts) + 1), "blobs", blob))
    for ref in refs:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def _card(model_dir: Path, **front) -> Path:
    (model_dir / "README.md").write_text("---\n" + yaml.safe_dump(front) + "---\n\n# model\n")
    return model_dir


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hub")
    base = _card(write_llama(root / "src" / "tiny-base", seed=0, **SHAPE), license="apache-2.0")
    tuned = _card(write_llama(root / "work" / "tuned", seed=1, base=base, **SHAPE), license="mit", base_model=REPO)
    cache = root / "hf-cache"
    snapshot = mirror(base, cache, REPO, COMMIT, refs=("main", "v1"))
    return {"root": root, "base": base, "tuned": tuned, "cache": cache, "snapshot": snapshot}


@pytest.fixture
def hf_cache(hub, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub["cache"]))
    return hub["cache"]


def _recipe(hub, ref: str) -> str:
    return yaml.safe_dump({"merge_method": "linear", "name": "hub-merge", "dtype": "float32", "models": [
        {"model": ref, "parameters": {"weight": 0.5}},
        {"model": str(hub["tuned"]), "parameters": {"weight": 0.5}}]})


@pytest.mark.parametrize("ref", [f"{REPO}@{COMMIT}", f"{REPO}@{COMMIT[:7]}", f"{REPO}@main", f"{REPO}@v1", REPO])
def test_a_repo_id_resolves_to_its_cached_snapshot(hub, hf_cache, ref):
    source = resolve_model(ref)
    assert source.path == hub["snapshot"]
    assert (source.repo_id, source.commit) == (REPO, COMMIT)
    assert snapshot_of(source.path) == (REPO, COMMIT) and display_name(source.path) == REPO


def test_a_local_directory_wins_over_a_repo_id(hub, hf_cache, tmp_path):
    local = write_llama(tmp_path / "acme" / "tiny-base", seed=5, **SHAPE)
    source = resolve_model(REPO, tmp_path)
    assert source.path == local and source.repo_id is None and source.commit is None


@pytest.mark.parametrize("ref,needle", [
    ("acme/absent", "no acme/absent in the Hugging Face cache"),
    (f"{REPO}@v9", "has acme/tiny-base but no revision 'v9' (refs: main, v1)"),
    (f"{REPO}@{'f' * 40}", "no revision"),
])
def test_a_reference_found_nowhere_names_itself_the_cache_and_the_fix(hub, hf_cache, ref, needle):
    with pytest.raises(SourceNotFound) as exc:
        resolve_model(ref)
    message = str(exc.value)
    assert message.startswith(f"{ref}: model not found") and needle in message
    assert str(hf_cache) in message and "mirror it into the cache" in message and "\n" not in message


def test_a_partial_mirror_is_named(hub, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    mirror(hub["base"], cache, REPO, COMMIT)
    (cache / "models--acme--tiny-base" / "refs" / "main").write_text("e" * 40)  # a ref past the mirrored snapshot
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(SourceNotFound, match="is commit e{40} but .* is missing"):
        resolve_model(REPO)


def test_the_cache_is_read_from_hf_home_when_hf_hub_cache_is_unset(hub, tmp_path, monkeypatch):
    mirror(hub["base"], tmp_path / "home" / "hub", REPO, COMMIT)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert resolve_model(REPO).path == tmp_path / "home" / "hub" / "models--acme--tiny-base" / "snapshots" / COMMIT


def test_a_snapshot_has_the_content_id_of_a_copy_and_only_blob_links_are_followed(hub, tmp_path):
    assert content_id(hub["snapshot"]) == content_id(hub["base"])
    outside = shutil.copytree(hub["base"], tmp_path / "outside")
    stray = mirror(hub["base"], tmp_path / "cache", "acme/stray", COMMIT)
    (stray / "config.json").unlink()
    (stray / "config.json").symlink_to(outside / "config.json")  # bytes outside the repo's blobs/
    with pytest.raises(UsageError, match="config.json is a symlink"):
        content_id(stray)
    shutil.rmtree(tmp_path / "cache" / "models--acme--stray" / "blobs")  # links into a blobs/ that is gone
    with pytest.raises(UsageError, match="README.md is a symlink"):
        content_id(stray)


@pytest.mark.parametrize("ref", [f"{REPO}@{COMMIT}", f"{REPO}@main", REPO])
def test_mergeops_merge_reads_a_repo_id_parent(hub, hf_cache, tmp_path, ref):
    (tmp_path / "recipe.yaml").write_text(_recipe(hub, ref))
    result = CliRunner().invoke(cli, ["merge", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "mergeops.manifest.json").read_text())
    assert manifest["parents"][0] == {"path": str(hub["snapshot"]), "content_id": content_id(hub["base"])}
    # the same recipe reading the plain directory gives the same bytes: where a parent lives changes nothing
    plain = parse_recipe(_recipe(hub, ref)).model_copy(update={"locked": {ref: hub["base"]}})
    assert run_merge(plain, tmp_path / "plain", progress=False).content_id == manifest["content_id"]


@pytest.mark.parametrize("ref", ["acme/absent", f"{REPO}@v9"])
def test_mergeops_merge_of_a_missing_repo_or_revision_exits_2_with_one_line(hub, hf_cache, tmp_path, ref):
    (tmp_path / "recipe.yaml").write_text(_recipe(hub, ref))
    result = CliRunner().invoke(cli, ["merge", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {ref}: model not found") and result.stderr.count("\n") == 1
    assert str(hf_cache) in result.stderr and not (tmp_path / "out").exists()


def test_the_audit_reports_the_commit_and_finds_the_base_by_repo_id(hub, hf_cache):
    result = CliRunner().invoke(cli, ["audit", f"{REPO}@main", str(hub["tuned"]), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    first = doc["parents"][0]
    assert (first["path"], first["repo_id"], first["revision"], first["revision_kind"]) == (
        f"{REPO}@main", REPO, COMMIT, "hf-snapshot")
    assert first["content_id"] == content_id(hub["base"]) and first["is_base"]  # tuned declares base_model: acme/tiny-base
    assert not [f for f in doc["findings"] if f["check"] == "compat.ancestry"]
    text = CliRunner().invoke(cli, ["audit", f"{REPO}@v1", str(hub["tuned"])])
    assert text.exit_code == 0 and f"{REPO} at commit {COMMIT}" in text.stdout


def test_the_lineage_and_card_record_repo_id_and_commit(hub, hf_cache, tmp_path):
    from flows.pipeline import _references, _revisions, parent_dirs
    from registry.audit import audit_models

    text = _recipe(hub, f"{REPO}@main")
    recipe = parse_recipe(text, tmp_path)
    assert parent_dirs(recipe) == [str(hub["snapshot"].resolve()), str(hub["tuned"].resolve())]
    audit = audit_models(recipe.model_refs(), base_dir=tmp_path)
    merged = run_merge(recipe, tmp_path / "out", progress=False)
    record = build_lineage(name="hub-merge", recipe_text=text, recipe_sha256=recipe.sha256, recipe_base_dir=tmp_path,
                           merge_manifest=merged.manifest, audit_report=audit, requested_by="alice",
                           references=_references(recipe), revisions=_revisions(audit))
    hub_parent, local_parent = record.parents
    assert (hub_parent.reference, hub_parent.repo_id, hub_parent.commit, hub_parent.resolved_revision) == (
        f"{REPO}@main", REPO, COMMIT, COMMIT)
    assert hub_parent.content_id == content_id(hub["base"]) and hub_parent.license == "apache-2.0"
    assert (local_parent.repo_id, local_parent.commit) == (None, None)
    front = yaml.safe_load(render_model_card(record, name="hub-merge").split("---\n")[1])
    assert front["base_model"] == [REPO, "tuned"]  # a repo id, else the directory's name: no local path
    again = type(record).from_json_bytes(record.to_json_bytes())
    assert again.parents[0].commit == COMMIT


def test_verify_replays_the_recorded_commit_after_main_moved(hub, tmp_path, monkeypatch):
    from registry import mlflow_registry as reg
    from registry.keys import load_signing_key
    from registry.verify import verify_version

    cache = tmp_path / "cache"
    mirror(hub["base"], cache, REPO, COMMIT)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    text = _recipe(hub, REPO)
    recipe = parse_recipe(text, tmp_path)
    merged = run_merge(recipe, tmp_path / "out", progress=False)
    audit = {"verdict": "pass", "parents": []}
    record = build_lineage(name="hub-verify", recipe_text=text, recipe_sha256=recipe.sha256, recipe_base_dir=tmp_path,
                           merge_manifest={**merged.manifest, "parents": merged.parents}, audit_report=audit,
                           requested_by="alice")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    key = load_signing_key(tmp_path / "signing-key.pem", create=True)
    info = reg.register_candidate(tracking_uri=uri, name="hub-verify", model_dir=merged.out_dir, lineage=record,
                                  audit_log_path=tmp_path / "log.jsonl", artifact_location=(tmp_path / "art").as_uri(),
                                  signing_key=key)
    # The repo publishes new weights: main moves on, the recorded commit stays in the cache.
    mirror(write_llama(tmp_path / "newer", seed=9, **SHAPE), cache, REPO, "f" * 40, refs=("main",))
    assert resolve_model(REPO).commit == "f" * 40
    result = verify_version(uri, "hub-verify@1", audit_log_path=tmp_path / "log.jsonl",
                            public_key=key.public)
    assert result.content_id == merged.content_id == info.tag("content_id") and result.restored == {}
    assert info.tag("parent.0.repo_id") == REPO and info.tag("parent.0.commit") == COMMIT

    # The recorded commit leaves this machine's cache: the artifact store that versioned it has it.
    from flows.dvc_store import DvcStore, parent_path

    store = DvcStore(tmp_path / "store", str(tmp_path / "remote")).ensure()
    store.track({parent_path(p["content_id"]): Path(p["path"]) for p in merged.parents}, "parents")
    shutil.rmtree(cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT)
    result = verify_version(uri, "hub-verify@1", audit_log_path=tmp_path / "log.jsonl", public_key=key.public,
                            restore=store.restore_parent)
    assert result.content_id == merged.content_id
    assert result.restored == {REPO: content_id(hub["base"])}
