"""Progress and quiet output: plain lines in logs (no carriage-return bars), a bar only on request
or a terminal, and no library noise (lm-eval's ``fatal: not a git repository`` above all)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import merge.progress as progress_module
from merge.errors import UsageError
from merge.progress import Progress, progress_mode, say
from merge.synthetic import write_llama

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_plain_mode_writes_a_line_per_tenth_and_never_a_carriage_return(capsys, monkeypatch):
    monkeypatch.setenv("MERGEOPS_PROGRESS", "plain")
    monkeypatch.setattr(progress_module, "PLAIN_GAP_S", 0.0)
    with Progress("zoo: training sort", 100, unit="steps") as bar:
        for _ in range(100):
            bar.advance(1, "loss 0.5")
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert [int(re.match(r"zoo: training sort (\d+)% \(\d+/100 steps\), loss 0\.5, ", ln).group(1))
            for ln in lines] == list(range(10, 101, 10))


def test_a_quick_step_logs_only_its_end_and_a_short_one_says_where_it_ended(capsys, monkeypatch):
    monkeypatch.setenv("MERGEOPS_PROGRESS", "plain")
    with Progress("merge", 30, unit="tensors") as bar:
        for _ in range(30):
            bar.advance()
    with Progress("evaluate: base (1/2 models): lm-eval loglikelihood", 10, unit="requests") as bar:
        bar.advance(7)  # grouped requests: fewer model rows than requests
    say("evaluate: base (2/2 models): 4 lm-eval task(s) from the cache")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("merge 100% (30/30 tensors)")
    assert lines[1].startswith("evaluate: base (1/2 models): lm-eval loglikelihood 70% (7/10 requests)")
    assert lines[2] == "evaluate: base (2/2 models): 4 lm-eval task(s) from the cache"


def test_the_mode_follows_the_switch(capsys, monkeypatch):
    monkeypatch.setenv("MERGEOPS_PROGRESS", "off")
    with Progress("merge", 3) as bar:
        bar.advance(3)
    say("nothing")
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("MERGEOPS_PROGRESS", "bar")
    with Progress("merge", 3) as bar:
        bar.advance(3)
    assert "\r" in capsys.readouterr().err  # a tqdm bar, only when asked for or on a terminal
    monkeypatch.setenv("MERGEOPS_PROGRESS", "auto")
    assert progress_mode() == "plain"  # pytest's captured stderr is not a terminal
    assert progress_mode(enabled=False) == "off"
    monkeypatch.setenv("MERGEOPS_PROGRESS", "loud")
    with pytest.raises(UsageError, match="MERGEOPS_PROGRESS='loud': use one of auto, bar, plain, off"):
        Progress("merge", 3)


def test_library_switches_are_put_back_as_they_were():
    import datasets
    import lm_eval.api.task as task_module
    import lm_eval.evaluator as evaluator_module
    from huggingface_hub import utils as hub
    from transformers.utils import logging as tf_logging

    from evaluation.quiet import quiet_libraries, quiet_lm_eval

    def state():
        return (datasets.are_progress_bars_disabled(), hub.are_progress_bars_disabled(),
                tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity())

    hub.disable_progress_bars()  # a caller's own choice, which must survive
    try:
        before = state()
        with quiet_libraries():
            assert state()[:3] == (True, True, False) and state()[3] == 40  # logging.ERROR
        assert state() == before
    finally:
        hub.enable_progress_bars()
    git_hash, task_tqdm = evaluator_module.get_git_commit_hash, task_module.tqdm
    with quiet_lm_eval(), quiet_lm_eval():
        assert evaluator_module.get_git_commit_hash() is None  # git is never run
    assert (evaluator_module.get_git_commit_hash, task_module.tqdm) == (git_hash, task_tqdm)


def _run(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    """`mergeops ARGS` in a fresh process whose stderr is a pipe (as in a log or CI), outside any
    git checkout, so a stray `git` call would print `fatal: not a git repository`."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "GIT_CEILING_DIRECTORIES": str(cwd.parent), **env}
    full_env.pop("MERGEOPS_PROGRESS", None)
    assert subprocess.run(["git", "rev-parse"], cwd=cwd, capture_output=True).returncode != 0
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=600)


def test_merge_in_a_log_prints_plain_progress(tmp_path):
    base = write_llama(tmp_path / "base", seed=0, hidden=32, layers=2, intermediate=64, vocab=64)
    write_llama(tmp_path / "tuned", seed=1, base=base, hidden=32, layers=2, intermediate=64, vocab=64)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"merge_method": "linear", "models": [
        {"model": "base", "parameters": {"weight": 0.5}}, {"model": "tuned", "parameters": {"weight": 0.5}}]}))
    proc = _run(["merge", "recipe.yaml", "--out", "out"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "fatal:" not in proc.stderr
    assert re.search(r"^merge 100% \((\d+)/\1 tensors\), \d+ MB/s, [\d.]+ s$", proc.stderr, re.M), proc.stderr


def test_evaluate_in_a_log_prints_plain_progress_and_no_git_noise(tiny_zoo, tmp_path):
    models = tiny_zoo / "models"
    proc = _run(["evaluate", "--zoo", str(tiny_zoo), "--merged", str(models / "sort"), str(models / "base"),
                 "--cache-dir", str(tmp_path / "cache")], tmp_path, MERGEOPS_HOME=str(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    err = proc.stderr
    assert "fatal: not a git repository" not in err
    assert "\r" not in err  # no tqdm bar from transformers, datasets or lm-eval
    for i, name in ((1, "sort"), (2, "base")):
        assert f"evaluate: {name} ({i}/2 models): lm-eval on 4 task(s): zoo_reverse, zoo_shift, zoo_sort, zoo_swap" in err
        assert re.search(rf"^evaluate: {name} \({i}/2 models\): lm-eval generate_until 100% \((\d+)/\1 requests\)",
                         err, re.M), err
    assert "seem to have been set" not in err  # transformers' per-batch generation warning
    assert err.count("\n") <= 6, err  # progress, not noise
