"""``mergeops audit``: the source-model audit of would-be merge parents."""

from __future__ import annotations

import click

from merge.errors import UsageError


def _parse_pins(values: tuple[str, ...]) -> dict[str, str]:
    pins = {}
    for value in values:
        ref, sep, pin = value.rpartition("=")
        if not sep or not ref:
            raise UsageError(f"--pin {value!r}: expected MODEL_DIR=CONTENT_ID")
        pins[ref] = pin
    return pins


def _short(value: str | None, width: int = 12) -> str:
    return "-" if value is None else value[:width]


def format_report(report) -> str:
    """A short table of parents, then one of findings, then the verdict."""
    width = max([len(p.path) for p in report.parents] + [6])
    lines = [f"{'parent':<{width}}  {'licence':<24}  {'content id':<12}  verdict"]
    for p in report.parents:
        mark = " (base)" if p.is_base else ""
        lines.append(f"{p.path:<{width}}  {p.license or '-':<24}  {_short(p.content_id):<12}  {p.verdict}{mark}")
        if p.repo_id:  # read from the Hugging Face cache: which commit was audited
            lines.append(f"{'':<{width}}  {p.repo_id} at commit {p.revision}")
    if report.findings:
        lines += ["", f"{'severity':<8}  {'parent':<{width}}  {'check':<22}  message"]
        order = {"error": 0, "warning": 1, "info": 2}
        for f in sorted(report.findings, key=lambda f: order[f.severity]):
            lines.append(f"{f.severity:<8}  {f.parent:<{width}}  {f.check:<22}  {f.message}")
    errors = sum(f.severity == "error" for f in report.findings)
    warnings = sum(f.severity == "warning" for f in report.findings)
    lines += ["", f"verdict: {report.verdict.upper()} ({errors} error(s), {warnings} warning(s)); "
                  f"intended use: {report.intended_use}",
              f"effective licence: {report.effective_license}"]
    lines += [f"  obligation: {o}" for o in report.obligations]
    return "\n".join(lines)


@click.command("audit")
@click.argument("model_dirs", nargs=-1, required=True)
@click.option("--intended-use", type=click.Choice(["commercial", "research"]), default="research",
              show_default=True, help="commercial refuses any non-commercial parent.")
@click.option("--policy", "policy", default=None, metavar="FILE",
              help="Licence/audit policy YAML (default: the shipped registry/license_policy.yaml).")
@click.option("--base", default=None, metavar="MODEL_DIR",
              help="The base model (default: the parent the others declare as base_model).")
@click.option("--pin", "pins", multiple=True, metavar="MODEL_DIR=ID",
              help="Refuse MODEL_DIR unless its content id (or git revision) is ID. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (keys per DESIGN.md).")
def audit(model_dirs: tuple[str, ...], intended_use: str, policy: str | None,
          base: str | None, pins: tuple[str, ...], as_json: bool) -> None:
    """Audit model directories before they are merged: format safety (safetensors only, pickles
    refused unopened), sha256 manifest and content id, licence and obligations, architecture and
    tokenizer compatibility, base-model ancestry, weight sanity.

    A MODEL_DIR may also be a Hugging Face repo id, ORG/NAME[@REVISION] (a branch, tag or commit;
    main by default), read offline from the local Hugging Face cache (HF_HUB_CACHE or HF_HOME).

    Exit status: 0 pass, 1 a finding of error severity, 2 bad input.

    \b
    Example:
      mergeops zoo build --profile tiny --out /tmp/zoo
      mergeops audit /tmp/zoo/models/base /tmp/zoo/models/sort /tmp/zoo/models/reverse
      mergeops audit /tmp/zoo/models/sort /tmp/zoo/models/shift --intended-use commercial --json
    """
    from registry.audit import audit_models

    report = audit_models(list(model_dirs), intended_use=intended_use, policy=policy, base=base,
                          pins=_parse_pins(pins))
    click.echo(report.to_json() if as_json else format_report(report))
    report.raise_for_verdict()  # a failed audit: the report above, then one `error:` line (exit 1)
