"""The suite file: which domains a suite scores, with which lm-eval tasks and primary metrics.

A suite names its domains and, per domain, its tasks; the first task is the domain's primary one
(its metric is what retention, normalised average and gates read), later ones are reported too::

    name: acme-lookups
    domains:
      capitals:                 # the shorthand: greedy generation to "\\n", exact match (the zoo's rule)
        tasks: [{data: data/capitals.jsonl, prompt: question, target: answer}]
      units:
        metric: acc
        tasks: [{task: arc_easy}, {config: {task: units_ll, ...an inline lm-eval task...}}]

A task is one of ``task`` (an lm-eval built-in by name; its data must be in the local Hugging Face
cache, evaluation runs offline), ``config`` (an inline lm-eval task config; relative ``data_files``
resolve against the suite file) or ``data`` (a JSONL/CSV/Parquet file, format from its suffix, with
a ``prompt`` and a ``target`` column). The older list form ``tasks: [{task|config|data, domain,
metric, n}]`` still works: each entry is its domain's primary task. ``zoo_domains`` (``all`` or a
list) adds the demo zoo's domains and needs the zoo directory; a suite file asks for none unless it
says so.

A domain may name its **dev split** for ``mergeops evolve``: ``dev: {data: FILE, prompt: COL,
target: COL}``, rows disjoint from its eval data. The search scores candidates on it (greedy
generation to "\n", exact match) and never on the eval split, which judges the winner.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evaluation.errors import SuiteError
from merge.bounded import load_yaml, read_text
from merge.errors import UsageError, error_location

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # domain and task names become file names
_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # columns are read by a Jinja template
_SHORTHAND_ONLY = ("prompt", "target", "name", "max_gen_toks")
DATA_METRIC = "exact_match"  # what the `data` shorthand reports


class SuiteTask(BaseModel):
    """One lm-eval task of a domain: exactly one of ``task``, ``config`` or ``data``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str | None = None  # an lm-eval built-in task, by name
    config: dict[str, Any] | None = None  # or a full lm-eval task config (must hold `task: <name>`)
    data: str | None = None  # or a JSONL/CSV/Parquet file, relative to the suite file
    prompt: str = "prompt"  # data: the column the model continues
    target: str = "target"  # data: the column the stripped continuation must equal
    name: str | None = None  # data: the task's name (default: the domain's)
    max_gen_toks: int | None = Field(default=None, gt=0)  # data: default the suite's
    metric: str | None = None  # default: the domain's metric; `data` tasks report exact_match
    n: int | None = Field(default=None, gt=0)  # expected sample count; `data` tasks count their rows

    @model_validator(mode="after")
    def _one_source(self) -> "SuiteTask":
        given = [k for k in ("task", "config", "data") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `task` (a built-in lm-eval task), `config` (an inline lm-eval "
                             "task) or `data` (a JSONL/CSV/Parquet file with prompt and target columns)")
        if self.config is not None and not isinstance(self.config.get("task"), str):
            raise ValueError("an inline task config needs `task: <name>`")
        stray = [k for k in _SHORTHAND_ONLY if k in self.model_fields_set]
        if self.data is None and stray:
            raise ValueError(f"`{stray[0]}` belongs to the `data` shorthand; this task has `{given[0]}`")
        if self.data is not None:
            for column in (self.prompt, self.target):
                if not _COLUMN.match(column):
                    raise ValueError(f"column {column!r}: use a column name of letters, digits and _")
            if self.name is not None and not _NAME.match(self.name):
                raise ValueError(f"task name {self.name!r}: use letters, digits, _ . -")
            if self.metric not in (None, DATA_METRIC):
                raise ValueError(f"a `data` task is scored by {DATA_METRIC}, not {self.metric!r}; use `config` "
                                 "for another metric")
            if self.n is not None:
                raise ValueError("a `data` task counts its rows; drop `n`")
        return self

    @property
    def source(self) -> str:
        return self.task or (self.config or {}).get("task") or str(self.data)

    def own_metric(self) -> str | None:
        return DATA_METRIC if self.data is not None else self.metric


class UserTask(SuiteTask):
    """An entry of the list form ``tasks:``: names its domain, and is that domain's primary task."""

    domain: str

    @model_validator(mode="after")
    def _has_metric(self) -> "UserTask":
        if self.own_metric() is None:
            raise ValueError("give the domain's primary `metric`, e.g. acc or exact_match")
        return self


class DevSplit(BaseModel):
    """A domain's dev split for search: a data file with a prompt and a target column."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: str  # JSONL/CSV/Parquet, relative to the suite file
    prompt: str = "prompt"
    target: str = "target"

    @model_validator(mode="after")
    def _columns(self) -> "DevSplit":
        for column in (self.prompt, self.target):
            if not _COLUMN.match(column):
                raise ValueError(f"column {column!r}: use a column name of letters, digits and _")
        return self


class SuiteDomain(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str | None = None  # the primary metric: what the first task reports
    tasks: list[SuiteTask] = []
    dev: DevSplit | None = None  # for `mergeops evolve`: prompts disjoint from the eval data

    @model_validator(mode="after")
    def _tasks_and_metrics(self) -> "SuiteDomain":
        if not self.tasks:
            raise ValueError("a domain needs at least one task, e.g. tasks: [{data: FILE, prompt: COL, target: COL}]")
        for i, task in enumerate(self.tasks):
            if (task.own_metric() or self.metric) is None:
                raise ValueError(f"task {i + 1} ({task.source}): give `metric` here or on the domain")
        first = self.tasks[0].own_metric()
        if self.metric is not None and first is not None and first != self.metric:
            raise ValueError(f"metric {self.metric!r} is not what the first (primary) task reports ({first!r})")
        return self


class Suite(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    # The demo zoo's domains: "all" or a list. A suite file asks for none unless it says so.
    zoo_domains: Literal["all"] | list[str] = []
    loglikelihood: bool = True  # zoo domains: add the target's log-likelihood task
    # Zoo targets are at most 7 letters; 16 leaves room to see what a broken model rambles.
    max_gen_toks: int = Field(default=16, gt=0)
    domains: dict[str, SuiteDomain] = {}
    tasks: list[UserTask] = []

    @field_validator("domains")
    @classmethod
    def _domain_names(cls, value: dict[str, SuiteDomain]) -> dict[str, SuiteDomain]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"domain name {name!r}: use letters, digits, _ . -")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> "Suite":
        if not (self.zoo_domains or self.domains or self.tasks):
            raise ValueError("the suite scores nothing: add `domains:` (see evaluation/suite_file.py) "
                             "or `zoo_domains: all`")
        return self

    @property
    def wants_zoo(self) -> bool:
        return bool(self.zoo_domains)

    def planned(self) -> list["PlannedTask"]:
        """Every task of the suite's own domains (zoo domains aside), with its domain, resolved
        metric, name and whether it is its domain's primary task."""
        out = []
        for domain, spec in self.domains.items():
            data_tasks = sum(t.data is not None for t in spec.tasks)
            for i, task in enumerate(spec.tasks):
                name = task.name or (domain if data_tasks == 1 else f"{domain}_{i + 1}")
                out.append(PlannedTask(domain=domain, task=task, metric=task.own_metric() or spec.metric,
                                       primary=i == 0, name=name if task.data is not None else task.source))
        for task in self.tasks:
            out.append(PlannedTask(domain=task.domain, task=task, metric=task.own_metric(), primary=True,
                                   name=(task.name or task.domain) if task.data is not None else task.source))
        return out


@dataclass(frozen=True)
class PlannedTask:
    domain: str
    task: SuiteTask
    metric: str
    primary: bool
    name: str


def _shipped() -> dict[str, dict]:
    text = resources.files("evaluation").joinpath("suites.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def suite_names() -> list[str]:
    return sorted(_shipped())


def _known_keys(loc: tuple) -> list[str]:
    """The keys allowed where an unknown key ``loc[-1]`` was found (for a 'did you mean')."""
    parent = [x for x in loc[:-1] if not str(x).startswith(("function-", "union", "list[", "dict["))]
    if not parent:
        return list(Suite.model_fields)
    if parent[0] == "domains":
        return list(SuiteDomain.model_fields) if len(parent) == 2 else list(SuiteTask.model_fields)
    return list(UserTask.model_fields)


def _one_line(name: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    where = error_location(loc, skip=("function-", "union", "list[", "literal["))
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"suite {name!r}: unknown key {where!r}{hint}"
    msg = err["msg"].removeprefix("Value error, ")
    return f"suite {name!r}: {where}: {msg}" if where else f"suite {name!r}: {msg}"


def suite_path(name: str, base_dir: Path | None) -> Path:
    """A file a suite names, resolved: relative to the suite file's directory (else the working one)."""
    path = Path(name)
    return (path if path.is_absolute() else (base_dir or Path.cwd()) / path).resolve()


def read_suite_text(path: Path) -> str:
    """A suite file's text, read within bounds (a regular file, strict UTF-8): a FIFO, a directory
    or a link to /dev/zero is one SuiteError line."""
    try:
        return read_text(path, what="suite file")
    except UsageError as exc:
        raise SuiteError(str(exc)) from None


def load_suite(name_or_path: str | Path) -> tuple[Suite, Path | None]:
    """A shipped suite by name, or a suite YAML file by path -> (suite, the file's directory).
    Checks the file's shape only; ``materialize`` checks the data it points at."""
    shipped = _shipped()
    if str(name_or_path) in shipped:
        doc, base = {"name": str(name_or_path), **shipped[str(name_or_path)]}, None
    else:
        path = Path(name_or_path)
        if not path.exists() and not path.is_symlink():
            raise SuiteError(f"unknown suite {str(name_or_path)!r}: give one of {', '.join(sorted(shipped))} "
                             "or the path of a suite YAML file")
        text = read_suite_text(path)
        try:
            doc = load_yaml(text, what=str(path))
        except UsageError as exc:
            raise SuiteError(str(exc)) from None
        if not isinstance(doc, dict):
            raise SuiteError(f"{path}: a suite file is a mapping with `domains:` (see evaluation/suite_file.py)")
        doc.setdefault("name", path.stem)
        base = path.parent.resolve()
    try:
        return Suite.model_validate(doc), base
    except ValidationError as exc:
        raise SuiteError(_one_line(str(doc.get("name")), exc)) from None
