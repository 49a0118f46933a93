"""Registry commands: lineage, approve, reject, promote, verify, log verify.

Each reads the tracking URI and the audit-log path from ``flows.settings.get_settings()``
(``MLFLOW_TRACKING_URI`` / ``MERGEOPS_HOME`` / ``mergeops.yaml``), exits 2 when no store is there,
and calls one registry function.
"""

from __future__ import annotations

import click


def _settings():
    """The settings, with a store that exists: reading never creates an empty registry."""
    from flows.settings import get_settings

    return get_settings().require_store()


@click.command()
@click.argument("spec", metavar="NAME[@VERSION|@ALIAS]")
@click.option("--json", "as_json", is_flag=True, help="Print the lineage record itself (canonical JSON).")
def lineage(spec: str, as_json: bool) -> None:
    """Show a registered model's lineage: parents → merged model, recipe, scores, gates, approvals.

    Without @VERSION or @ALIAS, shows the champion (or the latest version if there is none).

    \b
    Example:
      mergeops lineage demo-merge@champion
      mergeops lineage demo-merge@3 --json > lineage.json
    """
    from registry.lineage_tree import render_tree
    from registry.mlflow_registry import describe

    info, record = describe(_settings().tracking_uri, spec)
    if as_json:
        click.echo(record.to_json_bytes().decode())
    else:
        click.echo(render_tree(record, title=f"{info.name} v{info.version}", aliases=info.aliases,
                               approval=info.tag("approval")), nl=False)


@click.command()
@click.argument("name")
@click.argument("version")
@click.option("--reviewer", required=True, help="Who approves; never the requester (four-eyes).")
@click.option("--comment", default="", help="Why.")
def approve(name: str, version: str, reviewer: str, comment: str) -> None:
    """Approve a gate-passing version. The reviewer must not be the person who requested it.

    \b
    Example:
      mergeops approve demo-merge 3 --reviewer bob@example.com --comment "retention ok"
    """
    from registry.approvals import approve as do_approve

    s = _settings()
    info = do_approve(s.tracking_uri, name, version, reviewer=reviewer, comment=comment,
                      audit_log_path=s.audit_log_path)
    click.echo(f"{info.name} v{info.version}: approved by {reviewer}")


@click.command()
@click.argument("name")
@click.argument("version")
@click.option("--reviewer", required=True, help="Who rejects; never the requester (four-eyes).")
@click.option("--comment", required=True, help="Why (required).")
def reject(name: str, version: str, reviewer: str, comment: str) -> None:
    """Reject a version, saying why.

    \b
    Example:
      mergeops reject demo-merge 3 --reviewer bob@example.com --comment "arith retention too low"
    """
    from registry.approvals import reject as do_reject

    s = _settings()
    info = do_reject(s.tracking_uri, name, version, reviewer=reviewer, comment=comment,
                     audit_log_path=s.audit_log_path)
    click.echo(f"{info.name} v{info.version}: rejected by {reviewer}")


@click.command()
@click.argument("name")
@click.argument("version")
@click.option("--by", "by", required=True, help="Who promotes.")
def promote(name: str, version: str, by: str) -> None:
    """Move the alias `champion` to an approved, gate-passing version (artifacts re-hashed first).

    \b
    Example:
      mergeops promote demo-merge 3 --by carol@example.com
    """
    from registry.approvals import promote as do_promote

    s = _settings()
    info = do_promote(s.tracking_uri, name, version, by=by, audit_log_path=s.audit_log_path)
    click.echo(f"{info.name} v{info.version}: champion (content {info.tag('content_id')[:16]})")


@click.command()
@click.argument("spec", metavar="NAME@VERSION")
def verify(spec: str) -> None:
    """Re-run the merge from the lineage and check the weights are reproduced bit for bit.

    Each parent is found by its recorded content id: where it was, else (a Hugging Face parent)
    at its recorded commit in the local Hub cache, else restored from the artifact store (its DVC
    cache or remote) into a temporary folder ($TMPDIR) that is removed afterwards. Exit 1 when a
    parent is nowhere to be found or the re-merged files differ (named).

    \b
    Example:
      mergeops verify demo-merge@3
    """
    from flows.dvc_store import DvcStore
    from registry.verify import verify_version

    s = _settings()
    store = DvcStore(s.store_dir, s.dvc_remote_url)
    result = verify_version(s.tracking_uri, spec, audit_log_path=s.audit_log_path, work_dir=None,
                            restore=store.restore_parent)
    for reference, content_id in result.restored.items():
        click.echo(f"parent {reference}: restored from the store (content {content_id[:16]})")
    click.echo(f"{result.name} v{result.version}: reproduced bit for bit "
               f"({result.files} files, content {result.content_id[:16]})")


@click.group()
def log() -> None:
    """The tamper-evident audit log of registry state changes.

    \b
    Example:
      mergeops log verify
    """


@log.command("verify")
def log_verify() -> None:
    """Check the audit log's hash chain and the copies mirrored into MLflow; exit 1 naming a bad line.

    \b
    Example:
      mergeops log verify
    """
    from registry.mlflow_registry import verify_audit_log

    s = _settings()
    count, anchors = verify_audit_log(s.tracking_uri, s.audit_log_path)
    click.echo(f"{s.audit_log_path}: {count} entries, chain intact, {anchors} MLflow copies match")
