"""``mergeops zoo``: build the demo model zoo."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import click

# Same seed, same bytes on any x86-64 CPU with AVX2. Left alone, torch's own kernels and MKL pick
# the widest vector unit they find (AVX-512 on one machine, AVX2 on another); the sums round
# differently, and hundreds of training steps grow that into other models with other scores. The
# build therefore runs with both held to AVX2, set before torch starts (a fresh process).
ZOO_ISA = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


def _has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            return any(line.startswith("flags") and " avx2" in line for line in fh)
    except OSError:
        return False


def _isa_pinned_env() -> dict[str, str] | None:
    """The environment to re-run the build in, or None when this process already runs as it should
    or is not the `mergeops zoo build` command itself (a caller's process is never replaced)."""
    args = sys.argv[1:]
    if not any(args[i:i + 2] == ["zoo", "build"] for i in range(len(args))):
        return None
    if platform.machine().lower() not in ("x86_64", "amd64") or not _has_avx2():
        return None
    if all(os.environ.get(k) == v for k, v in ZOO_ISA.items()):
        return None
    return {**os.environ, **ZOO_ISA}


@click.group("zoo")
def zoo() -> None:
    """The demo model zoo: tiny Llama models built locally, for demos and tests.

    \b
    Example:
      mergeops zoo build --profile tiny --out /tmp/zoo
    """


@zoo.command("build")
@click.option("--profile", default="demo", show_default=True,
              help="demo: meets the quality bar (minutes); tiny: same structure, trained for seconds.")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("data/zoo"), show_default=True,
              help="Directory to build into; an older zoo there is replaced when the build completes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
def build(profile: str, out: Path, seed: int) -> None:
    """Build the zoo (tokenizer, base, specialists, the proprietary canary model, odd models, model
    cards, domain JSONL, zoo.json) and print its exact-match scorecard.

    \b
    Example:
      mergeops zoo build --profile tiny --out /tmp/zoo --seed 0
    """
    from evaluation.zoo.profiles import get_profile

    get_profile(profile)  # an unknown profile is one line here, before anything starts over
    env = _isa_pinned_env()
    if env is not None:  # torch may have chosen its kernels already: start over with the pins set
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "flows.cli", "zoo", "build", "--profile", profile,
                                   "--out", str(out), "--seed", str(seed)], env)
    from evaluation.zoo import build_zoo, format_table

    index = build_zoo(out, profile=profile, seed=seed, log=lambda msg: click.echo(msg, err=True))
    click.echo(format_table(index.scorecard))
    click.echo(f"wrote {out / 'zoo.json'}")
