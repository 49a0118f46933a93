"""The ``mergeops`` command line: each command parses arguments, calls one library function and
maps mergeops errors to one line on stderr and an exit code (0 ok, 1 a check said no, 2 bad input).

Library imports happen inside each command so ``mergeops --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from merge.errors import MergeopsError


class _OneLine(click.ClickException):
    """A usage error of click's own (a missing argument, a bad option value) as one ``error:`` line
    and exit 2, like every other bad input, instead of click's usage block."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _Group(click.Group):
    """Maps every MergeopsError raised by a command to one clear line and its exit code; click's
    own usage errors and what the file system refuses (a path that is a directory, a full disk)
    become one line too."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _OneLine(_usage_line(exc)) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MergeopsError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise _OneLine(_usage_line(exc)) from None
        except OSError as exc:  # a failure no check foresaw: still one line naming the file
            where = f"{exc.filename}: " if exc.filename else ""
            click.echo(f"error: {where}{exc.strerror or exc}", err=True)
            ctx.exit(2)
        except Exception as exc:
            if not _from_mlflow(exc):
                raise
            # An MLflow server that failed a request mid-command (a 5xx, a proxy's answer): one line.
            message = str(getattr(exc, "message", exc)).strip().splitlines()
            click.echo(f"error: the MLflow server refused a request: {message[0] if message else type(exc).__name__}",
                       err=True)
            ctx.exit(2)


def _from_mlflow(exc: Exception) -> bool:
    """Whether ``exc`` is MLflow's (checked by module: the CLI does not import MLflow itself)."""
    return any(cls.__module__.startswith("mlflow.") for cls in type(exc).__mro__)


def _usage_line(exc: click.UsageError) -> str:
    command = exc.ctx.command_path if exc.ctx is not None else "mergeops"
    return f"{exc.format_message()} (see `{command} --help`)"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mergeops")
def cli() -> None:
    """Governed model merging: audit → merge → evaluate → gate → register → approve → promote.

    \b
    Example:
      mergeops zoo build --profile tiny --out /tmp/zoo
    """


# Subcommand groups register here, one line each, explicitly (no import side effects).
from flows.cli_zoo import zoo as _zoo; cli.add_command(_zoo)  # noqa: E402,E702
from flows.cli_merge import merge as _merge; cli.add_command(_merge)  # noqa: E402,E702
from flows.cli_merge import calibrate as _calibrate; cli.add_command(_calibrate)  # noqa: E402,E702
from flows.cli_audit import audit as _audit; cli.add_command(_audit)  # noqa: E402,E702
from flows.cli_evaluate import evaluate as _evaluate; cli.add_command(_evaluate)  # noqa: E402,E702
from flows.cli_registry import lineage as _lineage; cli.add_command(_lineage)  # noqa: E402,E702
from flows.cli_registry import approve as _approve; cli.add_command(_approve)  # noqa: E402,E702
from flows.cli_registry import reject as _reject; cli.add_command(_reject)  # noqa: E402,E702
from flows.cli_registry import promote as _promote; cli.add_command(_promote)  # noqa: E402,E702
from flows.cli_registry import verify as _verify; cli.add_command(_verify)  # noqa: E402,E702
from flows.cli_registry import log as _log; cli.add_command(_log)  # noqa: E402,E702
from flows.cli_registry import repair as _repair; cli.add_command(_repair)  # noqa: E402,E702
from flows.cli_report import report as _report; cli.add_command(_report)  # noqa: E402,E702
from flows.cli_pipeline import run as _run; cli.add_command(_run)  # noqa: E402,E702
from flows.cli_pipeline import watch as _watch; cli.add_command(_watch)  # noqa: E402,E702
from flows.cli_serve import serve as _serve; cli.add_command(_serve)  # noqa: E402,E702
from flows.cli_evolve import evolve as _evolve; cli.add_command(_evolve)  # noqa: E402,E702
from flows.cli_deploy import deploy as _deploy; cli.add_command(_deploy)  # noqa: E402,E702


def main() -> None:
    from flows.runtime import quiet_environment

    quiet_environment()  # before any tool is imported: no telemetry, hubs read offline
    cli(prog_name="mergeops")


if __name__ == "__main__":
    sys.exit(main())
