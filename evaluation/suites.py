"""Evaluation suites, *materialised*: lm-eval task YAML generated at run time over local data.

A suite (``evaluation/suite_file.py``: the shipped ones in ``evaluation/suites.yaml``, a file of
your own by path) is written into an lm-eval include directory under the cache dir, one task YAML
per task with absolute ``data_files``, so lm-eval reads local files only. Zoo domains, when a suite
asks for them, give per domain

* ``zoo_<domain>``: greedy generation from ``prompt`` up to "\\n", exact match of the stripped
  continuation with ``target`` (the zoo's scoring rule) - the domain's *primary* metric;
* ``zoo_<domain>_ll`` (``loglikelihood: true``): log-likelihood of ``target`` after ``prompt``,
  reported as perplexity and teacher-forced greedy accuracy (``acc``).

The suite hash covers what decides the scores - task configs with every data file replaced by its
sha256 - never a path, so moving the data keeps the cache valid and editing one eval line breaks it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from evaluation import suite_tasks as st
from evaluation._io import atomic_write_text
from evaluation.datafiles import check_columns
from evaluation.errors import DataFileError, SuiteError
from evaluation.suite_file import PlannedTask, Suite, load_suite, suite_names, suite_path
from merge.manifest import canonical_json

__all__ = ["MaterializedSuite", "Suite", "TaskSpec", "load_suite", "materialize", "prepare_suite", "suite_names"]

ZOO_PREFIX = "zoo_"


class TaskSpec(BaseModel):
    """One materialised task: what it scores and how many samples a full run evaluates."""

    model_config = ConfigDict(frozen=True)

    name: str
    domain: str
    metrics: tuple[str, ...]
    primary: str | None  # the metric retention and gates read; None for secondary tasks
    n: int | None  # None: trust lm-eval's dataset size (built-in tasks without a pinned `n`)
    builtin: bool = False


class MaterializedSuite(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    suite_hash: str
    include_dir: Path
    tasks: tuple[TaskSpec, ...]
    max_gen_toks: int
    # domain -> the local data files its tasks read (eval texts for the contamination check);
    # built-in tasks read the Hugging Face cache and add none
    data_files: dict[str, tuple[Path, ...]] = {}

    @property
    def domains(self) -> list[str]:
        return sorted({t.domain for t in self.tasks})

    @property
    def needs_builtin(self) -> bool:
        return any(t.builtin for t in self.tasks)

    def primary(self) -> dict[str, tuple[str, str]]:
        """domain -> (task, metric) that stands for it."""
        return {t.domain: (t.name, t.primary) for t in self.tasks if t.primary}


def _zoo_tasks(suite: Suite, zoo_dir: Path | None) -> list[tuple[dict, TaskSpec]]:
    if not suite.wants_zoo:
        return []
    if zoo_dir is None:
        asked = "all" if suite.zoo_domains == "all" else ", ".join(suite.zoo_domains)
        raise SuiteError(f"suite {suite.name!r} asks for zoo domains ({asked}): give the zoo directory (--zoo DIR "
                         "or MERGEOPS_ZOO), or use a suite of your own without `zoo_domains` (--suite FILE)")
    from evaluation.zoo_source import domain_files

    available = domain_files(Path(zoo_dir))
    wanted = sorted(available) if suite.zoo_domains == "all" else list(suite.zoo_domains)
    out = []
    for domain in wanted:
        if domain not in available:
            raise SuiteError(f"suite {suite.name!r}: domain {domain!r} is not in {zoo_dir}/zoo.json "
                             f"(it has: {', '.join(sorted(available))})")
        data = available[domain].eval
        try:
            n = check_columns(data, ["prompt", "target"])
        except DataFileError as exc:
            raise SuiteError(f"eval data of zoo domain {domain!r}: {exc}; rebuild the zoo") from None
        gen = f"{ZOO_PREFIX}{domain}"
        out.append((st.generation_task(gen, data, suite.max_gen_toks),
                    TaskSpec(name=gen, domain=domain, metrics=("exact_match",), primary="exact_match", n=n)))
        if suite.loglikelihood:
            out.append((st.loglikelihood_task(f"{gen}_ll", data),
                        TaskSpec(name=f"{gen}_ll", domain=domain, metrics=("perplexity", "acc"), primary=None, n=n)))
    return out


def _own_task(suite: Suite, plan: PlannedTask, base_dir: Path | None) -> tuple[dict | None, TaskSpec]:
    """(lm-eval config or None for a built-in, spec) of one task of the suite's own domains."""
    task, where = plan.task, f"suite {suite.name!r}, domain {plan.domain!r}"
    primary = plan.metric if plan.primary else None
    if task.task is not None:
        return None, TaskSpec(name=plan.name, domain=plan.domain, metrics=(plan.metric,), primary=primary,
                              n=task.n, builtin=True)
    if task.config is not None:
        return (st.absolute_data_files(task.config, base_dir),
                TaskSpec(name=plan.name, domain=plan.domain, metrics=(plan.metric,), primary=primary, n=task.n))
    data = suite_path(task.data, base_dir)
    if not data.exists():
        raise SuiteError(f"{where}: data file {task.data} not found (looked at {data})")
    if not data.is_file():  # a FIFO, a device or a directory: never opened
        raise SuiteError(f"{where}: data file {task.data} is not a regular file ({data})")
    try:
        n = check_columns(data, [task.prompt, task.target])
    except DataFileError as exc:
        raise SuiteError(f"{where}: {exc}") from None
    config = st.generation_task(plan.name, data, task.max_gen_toks or suite.max_gen_toks,
                                prompt=task.prompt, target=task.target)
    return config, TaskSpec(name=plan.name, domain=plan.domain, metrics=(plan.metric,), primary=primary, n=n)


def materialize(suite: Suite, *, zoo_dir: Path | None = None, cache_dir: Path,
                base_dir: Path | None = None) -> MaterializedSuite:
    """Check the suite's data (files exist, named columns present, row counts) and write its task
    YAMLs into ``cache_dir/suites/<hash>/``. Cheap: reads and hashes the data, loads no model."""
    pairs = _zoo_tasks(suite, zoo_dir)
    builtins = []
    for plan in suite.planned():
        config, spec = _own_task(suite, plan, base_dir)
        pairs.append((config, spec))
        if config is None:
            builtins.append(spec.name)
    configs = [c for c, _ in pairs if c is not None]
    specs = [s for _, s in pairs]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SuiteError(f"suite {suite.name!r}: task names repeat ({', '.join(names)}); give a `data` task a `name`")
    domains = [s.domain for s in specs if s.primary]
    if len(set(domains)) != len(domains):
        raise SuiteError(f"suite {suite.name!r}: each domain needs exactly one primary task ({', '.join(domains)})")

    key = {"name": suite.name, "max_gen_toks": suite.max_gen_toks, "configs": [st.hashable(c) for c in configs],
           "builtins": builtins, "specs": [s.model_dump(exclude={"n"}) for s in specs]}
    suite_hash = hashlib.sha256(canonical_json(key)).hexdigest()
    include_dir = Path(cache_dir) / "suites" / suite_hash
    include_dir.mkdir(parents=True, exist_ok=True)
    for config in configs:
        target = include_dir / f"{config['task']}.yaml"
        text = yaml.safe_dump(config, sort_keys=True)
        if not target.exists() or target.read_text() != text:
            atomic_write_text(target, text)
    files: dict[str, list[Path]] = {}
    for config, spec in pairs:
        if config is not None:
            files.setdefault(spec.domain, []).extend(st.local_data_files(config))
    return MaterializedSuite(name=suite.name, suite_hash=suite_hash, include_dir=include_dir, tasks=tuple(specs),
                             max_gen_toks=suite.max_gen_toks,
                             data_files={d: tuple(dict.fromkeys(p)) for d, p in sorted(files.items())})


def prepare_suite(suite: str | Path | Suite, *, zoo_dir: Path | None = None, cache_dir: Path) -> MaterializedSuite:
    """Load (a shipped name or a file path) and materialise a suite: the check a pipeline runs
    before any audit or merge, so a bad suite fails in a second. Raises SuiteError."""
    base_dir = None
    if not isinstance(suite, Suite):
        suite, base_dir = load_suite(suite)
    return materialize(suite, zoo_dir=zoo_dir, cache_dir=Path(cache_dir), base_dir=base_dir)
