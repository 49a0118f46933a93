"""``mergeops report``: one self-contained HTML page an auditor opens for one registered version."""

from __future__ import annotations

import click


@click.command()
@click.argument("spec", metavar="NAME@VERSION")
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Where to write the page (replaced atomically).")
def report(spec: str, html_path: str) -> None:
    """Write one HTML page on a registered version: lineage graph, recipe, audit findings, scores and
    gates, leakage, approvals and promotions with their signature status, verify status.

    The page fetches nothing (it opens offline) and is also logged to the version's MLflow run as
    `report/report.html`. NAME@ALIAS (e.g. @champion) works too. Signatures are checked with the
    pinned public key (MERGEOPS_SERVICE_PUBLIC_KEY), else the store's own.

    \b
    Example:
      mergeops report demo-merge@3 --html demo-merge-v3.html
    """
    from pathlib import Path

    from flows.settings import get_settings
    from registry.errors import SigningKeyError
    from registry.keys import trusted_public_key
    from registry.report import write_report

    s = get_settings().require_store()
    try:
        public_key = trusted_public_key(s.service_public_key, s.signing_key_path)
    except SigningKeyError:
        public_key = None  # the page says "unchecked (no public key)" for every signed entry
    out = write_report(s.tracking_uri, spec, Path(html_path), audit_log_path=s.audit_log_path,
                       public_key=public_key)
    click.echo(str(out))
