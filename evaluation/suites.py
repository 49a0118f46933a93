"""Evaluation suites: named sets of lm-eval tasks, generated at run time over the zoo's JSONL.

A suite is declared in YAML (the shipped ones live in ``evaluation/suites.yaml``; a file of your own
is passed by path) and *materialised* into an lm-eval include directory under the cache dir: one
task YAML per zoo domain with absolute ``data_files`` (``dataset_path: json``), so lm-eval reads local
files only. Per zoo domain the suite holds

* ``zoo_<domain>``: greedy generation from ``prompt`` up to "\\n", exact match of the stripped
  continuation with ``target`` (the zoo's scoring rule) - the domain's *primary* metric;
* ``zoo_<domain>_ll`` (``loglikelihood: true``): log-likelihood of ``target`` after ``prompt``,
  reported as perplexity and teacher-forced greedy accuracy (``acc``).

User tasks go under ``tasks:``: an lm-eval built-in by name (``task: arc_easy``; its data must be in
the local Hugging Face cache, evaluation runs offline) or a full lm-eval task config inline
(``config: {...}``; relative ``data_files`` resolve against the suite file). Each names the
``domain`` it scores and its primary ``metric``; ``n`` optionally pins the expected sample count.

The suite hash covers what decides the scores - task configs with every data file replaced by its
sha256 - never a path, so moving the zoo keeps the cache valid and editing one eval line breaks it.
"""

from __future__ import annotations

import copy
import hashlib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evaluation._io import atomic_write_text
from evaluation.errors import SuiteError
from merge.manifest import canonical_json, sha256_file

ZOO_PREFIX = "zoo_"


class UserTask(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str | None = None  # an lm-eval built-in task, by name
    config: dict[str, Any] | None = None  # or a full lm-eval task config (must hold `task: <name>`)
    domain: str
    metric: str  # the primary metric of this domain, e.g. "acc" or "exact_match"
    n: int | None = Field(default=None, gt=0)  # expected sample count; default: the dataset's size

    @model_validator(mode="after")
    def _one_source(self) -> "UserTask":
        if (self.task is None) == (self.config is None):
            raise ValueError("give exactly one of `task` (a built-in name) or `config` (an inline task)")
        if self.config is not None and not isinstance(self.config.get("task"), str):
            raise ValueError("an inline task config needs `task: <name>`")
        return self

    @property
    def name(self) -> str:
        return self.task if self.task is not None else self.config["task"]


class Suite(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    zoo_domains: Literal["all"] | list[str] = "all"
    loglikelihood: bool = True
    # Zoo targets are at most 7 letters; 16 leaves room to see what a broken model rambles.
    max_gen_toks: int = Field(default=16, gt=0)
    tasks: list[UserTask] = []


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

    @property
    def domains(self) -> list[str]:
        return sorted({t.domain for t in self.tasks})

    @property
    def needs_builtin(self) -> bool:
        return any(t.builtin for t in self.tasks)

    def primary(self) -> dict[str, tuple[str, str]]:
        """domain -> (task, metric) that stands for it."""
        return {t.domain: (t.name, t.primary) for t in self.tasks if t.primary}


def _shipped() -> dict[str, dict]:
    text = resources.files("evaluation").joinpath("suites.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def suite_names() -> list[str]:
    return sorted(_shipped())


def load_suite(name_or_path: str | Path) -> tuple[Suite, Path | None]:
    """A shipped suite by name, or a suite YAML file by path -> (suite, the file's directory)."""
    shipped = _shipped()
    if str(name_or_path) in shipped:
        doc, base = {"name": str(name_or_path), **shipped[str(name_or_path)]}, None
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise SuiteError(f"unknown suite {str(name_or_path)!r}: give one of {', '.join(sorted(shipped))} "
                             "or the path of a suite YAML file")
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise SuiteError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(doc, dict):
            raise SuiteError(f"{path}: a suite file is a mapping with at least `name`")
        doc.setdefault("name", path.stem)
        base = path.parent.resolve()
    try:
        return Suite.model_validate(doc), base
    except ValidationError as exc:
        err = exc.errors()[0]
        raise SuiteError(f"suite {doc.get('name')!r}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _zoo_domains(zoo_dir: Path) -> dict[str, Path]:
    from evaluation.zoo import load_zoo

    zoo = load_zoo(zoo_dir)
    return {d.name: (Path(zoo_dir) / d.eval).resolve() for d in zoo.domains}


def _count_lines(path: Path) -> int:
    with path.open(encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def _jsonl_task(name: str, data: Path, output_type: str, **settings) -> dict:
    """An lm-eval task over one of the zoo's JSONL files (``prompt`` → ``target``)."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": output_type,
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{target}}",
        **settings,
        "metadata": {"version": 1},
    }


def _generation_task(name: str, data: Path, max_gen_toks: int) -> dict:
    return _jsonl_task(
        name, data, "generate_until",
        generation_kwargs={"until": ["\n"], "do_sample": False, "max_gen_toks": max_gen_toks},
        # The zoo's rule: the stripped continuation must equal the target.
        filter_list=[{"name": "strip", "filter": [
            {"function": "regex", "regex_pattern": r"^\s*([\s\S]*?)\s*$", "fallback": ""},
            {"function": "take_first"}]}],
        metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    )


def _loglikelihood_task(name: str, data: Path) -> dict:
    return _jsonl_task(
        name, data, "loglikelihood",
        target_delimiter="",  # prompts end in "=", the target follows directly
        metric_list=[{"metric": "perplexity", "aggregation": "perplexity", "higher_is_better": False},
                     {"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    )


def _absolute_data_files(config: dict, base: Path | None) -> dict:
    config = copy.deepcopy(config)
    files = config.get("dataset_kwargs", {}).get("data_files")
    if files is None or base is None:
        return config

    def fix(p: str) -> str:
        return str((base / p).resolve()) if not Path(p).is_absolute() else p

    if isinstance(files, str):
        files = fix(files)
    elif isinstance(files, list):
        files = [fix(p) for p in files]
    elif isinstance(files, dict):
        files = {k: fix(v) if isinstance(v, str) else [fix(p) for p in v] for k, v in files.items()}
    config["dataset_kwargs"]["data_files"] = files
    return config


def _hashable(config: dict) -> dict:
    """The config with every local data file replaced by its content hash (paths never enter a key)."""
    config = copy.deepcopy(config)
    files = config.get("dataset_kwargs", {}).get("data_files")
    if files is None:
        return config

    def digest(p: str) -> str:
        path = Path(p)
        if not path.is_file():
            raise SuiteError(f"task {config['task']!r}: data file {p} not found")
        return "sha256:" + sha256_file(path)

    if isinstance(files, str):
        files = digest(files)
    elif isinstance(files, list):
        files = [digest(p) for p in files]
    else:
        files = {k: digest(v) if isinstance(v, str) else [digest(p) for p in v] for k, v in files.items()}
    config["dataset_kwargs"]["data_files"] = files
    return config


def materialize(suite: Suite, *, zoo_dir: Path | None, cache_dir: Path, base_dir: Path | None = None) -> MaterializedSuite:
    """Write the suite's task YAMLs into ``cache_dir/suites/<hash>/`` and describe them."""
    configs: list[dict] = []
    specs: list[TaskSpec] = []
    if suite.zoo_domains == "all" or suite.zoo_domains:
        if zoo_dir is None:
            raise SuiteError(f"suite {suite.name!r} covers zoo domains: give the zoo directory (--zoo DIR)")
        available = _zoo_domains(Path(zoo_dir))
        wanted = sorted(available) if suite.zoo_domains == "all" else list(suite.zoo_domains)
        for domain in wanted:
            if domain not in available:
                raise SuiteError(f"suite {suite.name!r}: domain {domain!r} is not in {zoo_dir}/zoo.json "
                                 f"(it has: {', '.join(sorted(available))})")
            data = available[domain]
            if not data.is_file():
                raise SuiteError(f"{data}: eval data of domain {domain!r} missing; rebuild the zoo")
            n = _count_lines(data)
            gen = f"{ZOO_PREFIX}{domain}"
            configs.append(_generation_task(gen, data, suite.max_gen_toks))
            specs.append(TaskSpec(name=gen, domain=domain, metrics=("exact_match",), primary="exact_match", n=n))
            if suite.loglikelihood:
                configs.append(_loglikelihood_task(f"{gen}_ll", data))
                specs.append(TaskSpec(name=f"{gen}_ll", domain=domain, metrics=("perplexity", "acc"),
                                      primary=None, n=n))
    builtins: list[str] = []
    for user in suite.tasks:
        if user.config is not None:
            configs.append(_absolute_data_files(user.config, base_dir))
        else:
            builtins.append(user.name)
        specs.append(TaskSpec(name=user.name, domain=user.domain, metrics=(user.metric,), primary=user.metric,
                              n=user.n, builtin=user.config is None))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SuiteError(f"suite {suite.name!r}: task names repeat ({', '.join(names)})")
    domains = [s.domain for s in specs if s.primary]
    if len(set(domains)) != len(domains):
        raise SuiteError(f"suite {suite.name!r}: each domain needs exactly one primary task ({', '.join(domains)})")

    key = {"name": suite.name, "max_gen_toks": suite.max_gen_toks, "configs": [_hashable(c) for c in configs],
           "builtins": builtins, "specs": [s.model_dump(exclude={"n"}) for s in specs]}
    suite_hash = hashlib.sha256(canonical_json(key)).hexdigest()
    include_dir = Path(cache_dir) / "suites" / suite_hash
    include_dir.mkdir(parents=True, exist_ok=True)
    for config in configs:
        target = include_dir / f"{config['task']}.yaml"
        text = yaml.safe_dump(config, sort_keys=True)
        if not target.exists() or target.read_text() != text:
            atomic_write_text(target, text)
    return MaterializedSuite(name=suite.name, suite_hash=suite_hash, include_dir=include_dir, tasks=tuple(specs),
                             max_gen_toks=suite.max_gen_toks)
