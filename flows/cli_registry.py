"""Registry commands: lineage, approve, reject, promote, verify, log verify, repair.

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


def _governance():
    return _governance_of(_settings())


def _governance_of(settings):
    from flows.governance import Governance

    return Governance(settings)


_REVIEWER = ("Who decides. With a governance service it is your signed-in MLflow user (a different name is "
             "refused); with an embedded store, the name as typed (required).")


@click.command()
@click.argument("name")
@click.argument("version")
@click.option("--reviewer", default=None, help=_REVIEWER)
@click.option("--comment", default="", help="Why.")
def approve(name: str, version: str, reviewer: str | None, comment: str) -> None:
    """Approve a gate-passing version. The reviewer must not be the person who requested it.

    \b
    Example:
      mergeops approve demo-merge 3 --reviewer bob@example.com --comment "retention ok"
    """
    done = _governance().decide("approve", name, version, reviewer, comment)
    click.echo(f"{done.name} v{done.version}: approved by {done.by}")


@click.command()
@click.argument("name")
@click.argument("version")
@click.option("--reviewer", default=None, help=_REVIEWER)
@click.option("--comment", required=True, help="Why (required).")
def reject(name: str, version: str, reviewer: str | None, comment: str) -> None:
    """Reject a version, saying why.

    \b
    Example:
      mergeops reject demo-merge 3 --reviewer bob@example.com --comment "arith retention too low"
    """
    done = _governance().decide("reject", name, version, reviewer, comment)
    click.echo(f"{done.name} v{done.version}: rejected by {done.by}")


@click.command()
@click.argument("name")
@click.argument("version")
@click.option("--by", "by", default=None, help="Who promotes (as --reviewer: signed-in with a service).")
def promote(name: str, version: str, by: str | None) -> None:
    """Move the alias `champion` to a version the audit log approved (artifacts re-hashed first).

    \b
    Example:
      mergeops promote demo-merge 3 --by carol@example.com
    """
    done = _governance().promote(name, version, by)
    click.echo(f"{done.name} v{done.version}: champion (content {done.content_id[:16]}), promoted by {done.by}")


@click.command()
@click.argument("spec", metavar="NAME@VERSION")
def verify(spec: str) -> None:
    """Re-run the merge from the lineage and check the weights are reproduced bit for bit.

    Each parent is found by its recorded content id: where it was, else (a Hugging Face parent)
    at its recorded commit in the local Hub cache, else restored from the artifact store (its DVC
    cache or remote) into a temporary folder ($TMPDIR) that is removed afterwards; so is a
    regmean / fisher merge's statistics file, by its recorded sha256. Exit 1 when a parent or
    statistics file is nowhere to be found or the re-merged files differ (named).

    \b
    Example:
      mergeops verify demo-merge@3
    """
    from flows.dvc_store import DvcStore
    from registry.verify import verify_version

    s = _settings()
    store = DvcStore(s.store_dir, s.dvc_remote_url, s.dvc_remote_endpoint)
    governance = _governance_of(s)
    result = verify_version(s.tracking_uri, spec, audit_log_path=s.audit_log_path, work_dir=None,
                            public_key=governance.public_key(), restore=store.restore_parent,
                            record=governance.record_verified, restore_statistics=store.restore_statistics)
    for reference, content_id in result.restored.items():
        click.echo(f"parent {reference}: restored from the store (content {content_id[:16]})")
    for path, sha256 in result.restored_statistics.items():
        click.echo(f"statistics {path}: restored from the store (sha256 {sha256[:16]})")
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
    """Check the audit log (chain, signatures) and MLflow's copy of it; exit 1 naming each difference.

    Differences named: an edited, deleted or forged entry, a bad signature, a version without its
    `registered` entry, a tag or alias that says what the log does not (approval, champion).

    \b
    Example:
      mergeops log verify
    """
    where, count, anchors = _governance().verify_log()
    click.echo(f"{where}: {count} entries, chain intact, signatures valid, {anchors} MLflow copies match, "
               "tags and aliases agree with the log")


@click.command()
def repair() -> None:
    """Finish or undo what killed runs left, then check the audit log (exit 1 naming what is still off).

    Removes temp dirs of dead merges and registrations, drops copies in the artifact store that a
    kill left un-versioned (and any raw weights committed to its git), completes a registration cut
    short after its model version was created (alias, signed `registered` entry) or rolls back one
    cut short before (its MLflow run deleted), and mirrors into MLflow the decisions and promotions
    the log holds but MLflow does not show yet. Differences that are not interruptions (an edited
    tag or alias) are named, never overwritten.

    \b
    Example:
      mergeops repair
    """
    from flows.repair import repair as run_repair

    s = _settings()
    governance = _governance_of(s)
    lines = run_repair(s, governance.public_key())
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo("nothing was left half done")
    where, count, anchors = governance.verify_log()
    click.echo(f"{where}: {count} entries, chain intact, {anchors} MLflow copies match, tags and aliases agree "
               "with the log")
