"""Run a materialised suite through lm-eval on a model loaded in memory, and cache the rows.

The cache key is (model content id, suite hash, lm-eval version): the same bytes scored by the same
tasks with the same harness give the same numbers, so a re-run with nothing changed loads no model
and calls lm-eval zero times. ``LM_EVAL_CALLS`` counts real calls in this process, and every row
says whether it came from the cache, so a caller (or a test) can prove a hit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from importlib.metadata import version
from pathlib import Path

from evaluation._io import atomic_write_text
from evaluation.errors import ModelLoadError, SuiteError
from evaluation.quiet import quiet_libraries, quiet_lm_eval
from evaluation.suites import MaterializedSuite
from merge.manifest import canonical_json
from merge.model_dir import check_loadable
from merge.progress import Progress, say

LM_EVAL_VERSION = version("lm_eval")
# Real lm-eval calls made by this process (a test proves a cache hit by seeing it not move).
LM_EVAL_CALLS = 0

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")  # evaluation never reaches the network


def load_model(model_dir: Path, device: str = "cpu"):
    """(model, tokenizer) from a Hugging Face directory, float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not any(model_dir.glob("*.safetensors")):
        raise ModelLoadError(f"{model_dir}: no *.safetensors weights; evaluation loads safetensors only")
    check_loadable(model_dir)  # no pickle under any name, no FIFO or /dev/zero, before transformers
    try:
        with quiet_libraries():
            tok = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}: cannot be loaded for evaluation ({str(exc).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok


def cache_key(content_id: str, suite_hash: str) -> str:
    return hashlib.sha256(canonical_json(
        {"content_id": content_id, "suite_hash": suite_hash, "lm_eval": LM_EVAL_VERSION})).hexdigest()


def _cache_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "evaluation" / f"{key}.json"


def read_cache(cache_dir: Path, content_id: str, suite: MaterializedSuite, *,
               step: str | None = None) -> list[dict] | None:
    """The cached rows, or None; ``step`` (e.g. "evaluate: base (2/3 models)") reports a hit."""
    path = _cache_path(cache_dir, cache_key(content_id, suite.suite_hash))
    if not path.is_file():
        return None
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    except (json.JSONDecodeError, KeyError):
        return None  # a damaged entry is re-computed, never trusted
    if step:
        say(f"{step}: {len(suite.tasks)} lm-eval task(s) from the cache")
    return rows


def write_cache(cache_dir: Path, content_id: str, suite: MaterializedSuite, rows: list[dict]) -> None:
    path = _cache_path(cache_dir, cache_key(content_id, suite.suite_hash))
    doc = {"content_id": content_id, "suite": suite.name, "suite_hash": suite.suite_hash,
           "lm_eval": LM_EVAL_VERSION, "rows": rows}
    atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True))


def _number(x) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _mean_stderr(values: list[float], aggregate: float) -> float | None:
    """Closed-form standard error when the aggregate is the sample mean (else None: lm-eval's own
    bootstrap spins up a process pool per metric, too heavy for a per-candidate gate)."""
    n = len(values)
    if n < 2 or abs(sum(values) / n - aggregate) > 1e-9:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def parse_results(out: dict, suite: MaterializedSuite) -> list[dict]:
    """lm-eval's output -> tidy rows {domain, task, metric, value, stderr, n, n_expected}."""
    rows = []
    for spec in suite.tasks:
        res = out["results"].get(spec.name)
        if res is None:
            raise SuiteError(f"lm-eval returned no results for task {spec.name!r}")
        counts = out.get("n-samples", {}).get(spec.name, {})
        samples = out.get("samples", {}).get(spec.name, [])
        seen: dict[str, str] = {}
        for key, raw in sorted(res.items()):
            if "," not in key or "_stderr," in key:
                continue
            bare, _filter = key.split(",", 1)
            # a suite names a metric bare ("acc") or with its filter ("exact_match,strict-match")
            metric = bare if bare in spec.metrics else key if key in spec.metrics else None
            if metric is None:
                continue
            if metric in seen:
                raise SuiteError(f"task {spec.name!r} reports {metric} under filters {seen[metric]!r} and "
                                 f"{_filter!r}; name one in the suite, e.g. metric: '{bare},{_filter}'")
            seen[metric] = _filter
            value = _number(raw)
            stderr = _number(res.get(f"{bare}_stderr,{_filter}"))
            if stderr is None and value is not None:
                per_sample = [_number(s.get(bare)) for s in samples if s.get("filter") == _filter]
                if per_sample and all(v is not None for v in per_sample):
                    stderr = _mean_stderr(per_sample, value)
            rows.append({"domain": spec.domain, "task": spec.name, "metric": metric, "value": value,
                         "stderr": stderr, "n": int(counts.get("effective", len(samples))),
                         "n_expected": int(spec.n if spec.n is not None else counts.get("original", -1))})
        missing = sorted(set(spec.metrics) - set(seen))
        if missing:
            reported = sorted(k for k in res if "," in k and "_stderr," not in k)
            raise SuiteError(f"task {spec.name!r} reports no {', '.join(missing)} (it reports: {', '.join(reported)})")
    return rows


def _reporting(hflm: type, step: str) -> type:
    """HFLM reporting its requests through ``merge.progress`` (one line per tenth in a log, a bar
    on a terminal) instead of its own per-request tqdm bars, which pass ``disable=False``
    explicitly and so write carriage-return bars into logs whatever TQDM_DISABLE says."""

    class ReportingHFLM(hflm):
        _mergeops_bar: Progress | None = None

        def _tracked(self, kind: str, call, requests, **kwargs):
            with Progress(f"{step}: lm-eval {kind}", len(requests), unit="requests") as bar:
                self._mergeops_bar = bar
                try:
                    return call(requests, disable_tqdm=True, **kwargs)
                finally:
                    self._mergeops_bar = None

        def generate_until(self, requests, disable_tqdm: bool = False):
            return self._tracked("generate_until", super().generate_until, requests)

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return self._tracked("loglikelihood", super().loglikelihood, requests)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return self._tracked("loglikelihood_rolling", super().loglikelihood_rolling, requests)

        # One batch through the model: [batch, tokens] in, so its rows are requests done.
        def _model_generate(self, context, *args, **kwargs):
            out = super()._model_generate(context, *args, **kwargs)
            if self._mergeops_bar is not None:
                self._mergeops_bar.advance(int(context.shape[0]))
            return out

        def _model_call(self, inps, *args, **kwargs):
            out = super()._model_call(inps, *args, **kwargs)
            if self._mergeops_bar is not None:
                self._mergeops_bar.advance(int(inps.shape[0]))
            return out

    return ReportingHFLM


def run_suite(loaded: tuple, suite: MaterializedSuite, *, batch_size: int = 32, step: str = "evaluate") -> list[dict]:
    """Evaluate one loaded (model, tokenizer) on every task of ``suite``, in memory, on the full
    datasets (never a ``limit``); progress lines start with ``step``."""
    global LM_EVAL_CALLS
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model, tok = loaded
    log = logging.getLogger("lm_eval")
    level = log.level
    log.setLevel(logging.ERROR)  # its warnings about an in-memory model are expected here
    say(f"{step}: lm-eval on {len(suite.tasks)} task(s): {', '.join(t.name for t in suite.tasks)}")
    try:
        with quiet_libraries(), quiet_lm_eval():
            lm = _reporting(HFLM, step)(pretrained=model, tokenizer=tok, batch_size=batch_size)
            manager = TaskManager(include_path=str(suite.include_dir), include_defaults=suite.needs_builtin)
            LM_EVAL_CALLS += 1
            out = lm_eval.simple_evaluate(
                model=lm, tasks=[t.name for t in suite.tasks], task_manager=manager,
                bootstrap_iters=0, log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                fewshot_random_seed=0)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise SuiteError(f"suite {suite.name!r} could not run: {str(exc).splitlines()[0]}") from None
    finally:
        log.setLevel(level)
    return parse_results(out, suite)
