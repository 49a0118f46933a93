"""The project config, ``mergeops.yaml``: where the store lives, the default suite and policy, and
the watched recipes with their settings.

It is found as git finds ``.git``: in the working directory or the nearest folder above it
(``MERGEOPS_CONFIG`` names a file instead). Relative paths in it resolve against the folder that
holds it, so every command run anywhere inside the project reads the same store. Environment
variables override it (see flows/settings.py); nothing else is implicit.

```yaml
home: .mergeops                 # the store: MLflow sqlite, artifacts, DVC store, audit log, caches
tracking_uri: null              # an MLflow server instead of <home>/mlflow.db, e.g. http://mlflow:5000
dvc_remote: null                # the artifact store's DVC remote instead of <home>/dvc-remote, e.g. s3://bucket/dvc
dvc_remote_endpoint: null       # an S3-compatible endpoint for it, e.g. http://minio:9000
dask_address: null              # evaluate per model on a Dask cluster, e.g. tcp://scheduler:8786
evaluation_workers: 1           # without dask_address: N > 1 = a local Dask cluster of N workers
suite: suites/acme.yaml         # default for run, watch and evaluate (a shipped name or a file)
policy: policies/release.yaml   # default gate policy (a recipe's own `policy:` wins over it)
zoo: null                       # only for suites that ask for zoo domains
service_url: null               # the governance service of a shared server, e.g. http://mlflow:5080
service_public_key: keys/mergeops.pub   # the service's public key, pinned: signatures are checked with it
watch:
  - recipes/acme.yaml           # a recipe with the defaults above...
  - recipe: recipes/acme-ties.yaml
    policy: policies/strict.yaml   # ...or with settings of its own
    requested_by: platform-bot
```
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from flows.errors import ConfigError
from merge.bounded import load_yaml, read_text
from merge.errors import UsageError, error_location

CONFIG_NAME = "mergeops.yaml"
ENV_VAR = "MERGEOPS_CONFIG"
WATCH_CRON = "*/30 * * * *"  # the served or deployed watch's schedule unless --cron says otherwise
_MAX_BYTES = 1 << 20  # a project config is a few lines; refuse to read a huge or endless file


class WatchEntry(BaseModel):
    """One watched recipe; unset settings fall back to the config's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    recipe: str
    suite: str | None = None
    policy: str | None = None
    zoo: str | None = None
    requested_by: str | None = None


class ProjectConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    home: str | None = None
    tracking_uri: str | None = None
    dvc_remote: str | None = None
    dvc_remote_endpoint: str | None = None
    dask_address: str | None = None
    evaluation_workers: int | None = Field(default=None, ge=1)
    suite: str | None = None
    policy: str | None = None
    zoo: str | None = None
    service_url: str | None = None
    service_public_key: str | None = None
    watch: list[WatchEntry] = Field(default_factory=list)
    _path: Path | None = PrivateAttr(default=None)  # the file it was read from (None: no config)

    @field_validator("watch", mode="before")
    @classmethod
    def _plain_paths(cls, value):
        if isinstance(value, list):
            return [{"recipe": v} if isinstance(v, str) else v for v in value]
        return value

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def root(self) -> Path:
        return self._path.parent if self._path else Path.cwd()

    def resolve(self, value: str | None) -> str | None:
        """A path setting made absolute against the config's folder (a URL stays as it is)."""
        if value is None or "://" in value:
            return value
        return str((self.root / Path(value).expanduser()).resolve())

    def resolve_suite(self, value: str | None) -> str | None:
        """A suite is a file or a shipped name (``zoo``): a bare word that names no file stays a name."""
        if value is None or "/" in value or Path(value).suffix or (self.root / value).exists():
            return self.resolve(value)
        return value

    def watched(self) -> list[WatchEntry]:
        """Each watched recipe with every setting resolved (the entry's own, else the defaults)."""
        return [WatchEntry(recipe=self.resolve(w.recipe), suite=self.resolve_suite(w.suite or self.suite),
                           policy=self.resolve(w.policy or self.policy), zoo=self.resolve(w.zoo or self.zoo),
                           requested_by=w.requested_by) for w in self.watch]


def find_config(start: Path | None = None) -> Path | None:
    """``$MERGEOPS_CONFIG``, else ``mergeops.yaml`` in ``start`` (the cwd) or the nearest folder above."""
    named = os.environ.get(ENV_VAR)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ConfigError(f"{ENV_VAR}={named}: no such file")
        return path.resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).is_file():
            return folder / CONFIG_NAME
    return None


def load_config(path: Path | None = None) -> ProjectConfig:
    """The project config at ``path`` (else the one found from the cwd); empty when there is none."""
    path = path or find_config()
    if path is None:
        return ProjectConfig()
    try:  # bounded like every input: a regular file, strict UTF-8, YAML with an alias budget
        doc = load_yaml(read_text(path, limit=_MAX_BYTES, what="project config"), what=str(path))
    except UsageError as exc:
        raise ConfigError(str(exc)) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a mapping is expected (home, tracking_uri, suite, policy, zoo, watch)")
    try:
        config = ProjectConfig.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = error_location(err["loc"]) or "(top)"
        raise ConfigError(f"{path}: {where}: {err['msg']}") from None
    config._path = Path(path).resolve()
    return config
