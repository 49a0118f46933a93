"""Progress of long steps on stderr: a bar on a terminal, plain lines in a log, or nothing.

The zoo build, the evaluation and the merge each report through ``Progress`` (it lives in
``merge/`` because that folder may import nothing else of ours, and the others may import it).
``MERGEOPS_PROGRESS`` chooses how, read when a step starts:

- ``auto`` (default): a tqdm bar when stderr is a terminal, else plain lines;
- ``bar``, ``plain``: that, whatever stderr is;
- ``off``: nothing.

A log is read later, line by line, so plain mode never writes a carriage return: one line when
the work passes another tenth (at most one per ``PLAIN_GAP_S``), one at least every
``PLAIN_HEARTBEAT_S`` while the work moves, and one when it ends, e.g.
``zoo: training sort 40% (120/300 steps)``.
"""

from __future__ import annotations

import os
import sys
import time

from merge.errors import UsageError

MODES = ("auto", "bar", "plain", "off")
PLAIN_GAP_S = 2.0  # a quick step (a tiny merge) logs its last line only
PLAIN_HEARTBEAT_S = 60.0  # a slow tenth still shows that the work moves


def progress_mode(enabled: bool = True) -> str:
    """``bar``, ``plain`` or ``off`` for a step starting now (see the module docstring)."""
    if not enabled:
        return "off"
    mode = os.environ.get("MERGEOPS_PROGRESS", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise UsageError(f"MERGEOPS_PROGRESS={mode!r}: use one of {', '.join(MODES)}")
    if mode == "auto":
        isatty = getattr(sys.stderr, "isatty", None)
        return "bar" if isatty is not None and isatty() else "plain"
    return mode


def say(text: str, *, enabled: bool = True) -> None:
    """One line of status on stderr (above any bar on a terminal); nothing when progress is off."""
    mode = progress_mode(enabled)
    if mode == "bar":
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    elif mode == "plain":
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


class Progress:
    """One step's progress, ``total`` units of work (``advance`` them as they finish).

    ``label`` starts every line (``"merge"``, ``"zoo: training base"``); ``note`` writes a line
    of status (above the bar on a terminal). Use it as a context manager so the bar is closed.
    """

    def __init__(self, label: str, total: int | None = None, *, unit: str = "it", enabled: bool = True):
        self.label, self.total, self.unit = label, total, unit
        self.mode = progress_mode(enabled)
        self.n = 0
        self._stream = sys.stderr  # the stream of the caller, even if it is swapped meanwhile
        self._start = self._last = time.monotonic()
        self._tenth = 0
        self._printed = -1  # the count the last plain line showed
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit=f" {unit}", file=self._stream, dynamic_ncols=True,
                             leave=True)

    def advance(self, n: int = 1, detail: str = "") -> None:
        """``n`` more units done; ``detail`` (a rate, a name) is shown with the count."""
        n = min(n, self.total - self.n) if self.total is not None else n  # never past 100%
        self.n += n
        if self._bar is not None:
            if detail:
                self._bar.set_postfix_str(detail, refresh=False)
            self._bar.update(n)
        elif self.mode == "plain":
            now = time.monotonic()
            tenth = 10 * self.n // self.total if self.total else 0
            done = self.total is not None and self.n >= self.total
            due = (tenth > self._tenth and now - self._last >= PLAIN_GAP_S) or now - self._last >= PLAIN_HEARTBEAT_S
            if self.n != self._printed and (done or due):
                self._line(detail)
                self._tenth, self._last = tenth, now

    def note(self, text: str) -> None:
        """One line of status: ``<label>: <text>``."""
        if self._bar is not None:
            self._bar.write(f"{self.label}: {text}", file=self._stream)
        elif self.mode == "plain":
            self._write(f"{self.label}: {text}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "plain" and self.n != self._printed and self.n:
            self._line("")  # work that ended short of its estimate still says where it ended

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _line(self, detail: str) -> None:
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" {100 * self.n // self.total}%" if self.total else ""
        elapsed = time.monotonic() - self._start
        self._write(f"{self.label}{pct} ({count} {self.unit}){', ' + detail if detail else ''}, {elapsed:.1f} s")
        self._printed = self.n

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()
