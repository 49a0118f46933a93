"""Keep the libraries' own progress bars and chatter out of our logs, for one step at a time.

``merge.progress.Progress`` reports our steps; the libraries we call would otherwise add a
carriage-return bar per model load ("Loading weights"), per dataset ("Generating test split") and
per lm-eval task, generation warnings per batch, and ``fatal: not a git repository`` from lm-eval
once per model. Each switch here is the library's own, turned on when the step starts and put back
as it was when it ends, so nothing changes for a caller after we return. They are process-wide
while in force: two evaluations in threads of one process share them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import partial


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """transformers, datasets and huggingface_hub: no progress bars, only errors logged."""
    import datasets
    from datasets.utils import logging as ds_logging
    from huggingface_hub import utils as hub
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as tf_logging

    with ExitStack() as undo:
        # transformers' switch flips huggingface_hub's too, so the hub's own state is put back last
        hub_on = not hub.are_progress_bars_disabled()
        undo.callback(_put_back, hub_on, lambda: not hub.are_progress_bars_disabled(), hub.enable_progress_bars,
                      hub.disable_progress_bars)
        for enabled, on, off in (
            (not datasets.are_progress_bars_disabled(), datasets.enable_progress_bars, datasets.disable_progress_bars),
            (tf_logging.is_progress_bar_enabled(), tf_logging.enable_progress_bar, tf_logging.disable_progress_bar),
            (hub_on, hub.enable_progress_bars, hub.disable_progress_bars),
        ):
            if enabled:
                off()
                undo.callback(on)
        for lib in (tf_logging, ds_logging, hub_logging):
            undo.callback(lib.set_verbosity, lib.get_verbosity())
            lib.set_verbosity(logging.ERROR)
        yield


def _put_back(was_on: bool, is_on, on, off) -> None:
    if was_on != is_on():
        (on if was_on else off)()


_lm_eval_lock = threading.Lock()
_lm_eval_depth = 0
_lm_eval_saved: tuple = ()


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """lm-eval without running ``git`` and without its per-task "building requests" bars.

    ``simple_evaluate`` stores ``git describe`` of the *current directory* in its results (we
    never read it) by running ``git`` with our stderr, so every model evaluated outside a git
    checkout printed ``fatal: not a git repository``; and running git in whatever directory a user
    stands in can run that checkout's hooks or fsmonitor command. Its task builder opens a tqdm bar
    with no ``disable`` argument, so only tqdm's import-time TQDM_DISABLE could turn it off.
    Neither has a switch, so for the duration of the call the two module attributes are replaced
    (the hash reads as unknown, the bar is disabled) and then restored; nested and concurrent
    callers share one replacement, and the last to leave restores the originals. Redirecting
    file descriptor 2 instead would also swallow real errors and our own progress lines.
    """
    global _lm_eval_depth, _lm_eval_saved
    import lm_eval.api.task as task_module
    import lm_eval.evaluator as evaluator_module
    from tqdm import tqdm

    with _lm_eval_lock:
        if _lm_eval_depth == 0:
            _lm_eval_saved = (evaluator_module.get_git_commit_hash, task_module.tqdm)
            evaluator_module.get_git_commit_hash = lambda: None
            task_module.tqdm = partial(tqdm, disable=True)
        _lm_eval_depth += 1
    try:
        yield
    finally:
        with _lm_eval_lock:
            _lm_eval_depth -= 1
            if _lm_eval_depth == 0:
                evaluator_module.get_git_commit_hash, task_module.tqdm = _lm_eval_saved
