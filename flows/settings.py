"""One settings object: the environment (prefix ``MERGEOPS_``, plus the tools' own vars) over the
project config (``mergeops.yaml``, flows/config.py) over embedded defaults.

Embedded defaults run everything on one machine: state under ``.mergeops`` beside the project
config (else in the working directory), MLflow on a sqlite file with a local artifact root, Prefect
ephemeral, a local DVC remote folder. At scale the same code reads ``MLFLOW_TRACKING_URI`` (an
MLflow server), ``PREFECT_API_URL`` (a Prefect server) and ``MERGEOPS_DVC_REMOTE`` (e.g. an S3 URL);
nothing hard-codes a path or a host.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.config import CONFIG_NAME, ENV_VAR, ProjectConfig, load_config
from flows.errors import ConfigError, StoreMissing
from merge.bounded import regular_file

_DEFAULT_HOME = Path(".mergeops")
# Where MLflow can keep runs and versions (mlflow's own list, less Databricks' hosted stores).
_TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks",
                     "databricks-uc", "uc")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MERGEOPS_", extra="ignore")

    home: Path = _DEFAULT_HOME
    # None means the embedded default: sqlite:///<home>/mlflow.db with artifacts under <home>.
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "MERGEOPS_MLFLOW_TRACKING_URI")
    )
    # None means Prefect runs ephemeral (no server); set to pause flows for approval in the UI.
    prefect_api_url: str | None = Field(default=None, validation_alias=AliasChoices("PREFECT_API_URL"))
    # Set by flows/runtime.py when PREFECT_API_URL is the command's own local server (no UI, no reviewer).
    prefect_local_url: str | None = Field(default=None, validation_alias=AliasChoices("MERGEOPS_PREFECT_LOCAL"))
    dvc_remote: str | None = None  # None means <home>/dvc-remote
    # The S3 (or S3-compatible) endpoint of an s3:// DVC remote, e.g. MinIO's; None: AWS's own, or
    # AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL when set (the AWS variables DVC's S3 client reads).
    dvc_remote_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("MERGEOPS_DVC_REMOTE_ENDPOINT", "AWS_ENDPOINT_URL_S3",
                                                    "AWS_ENDPOINT_URL"))
    # Evaluation fanned out per model as Dask tasks (flows/evaluation.py): a scheduler's address
    # (tcp://HOST:8786) wins; else N > 1 starts a local cluster of N worker processes for the run;
    # 1 (the default) evaluates the models one after the other in the pipeline's own process.
    dask_address: str | None = None
    evaluation_workers: int = Field(default=1, ge=1)
    registered_model_prefix: str = ""
    # Defaults for run, watch and evaluate (a command's own option wins; a recipe's `policy:` too).
    suite: str | None = None
    policy: str | None = None
    zoo: str | None = None
    # Governance (registry/keys.py, registry/service.py): the key that signs log entries and models
    # (MERGEOPS_SIGNING_KEY; None: <home>/keys/signing-key.pem, created on first use in embedded
    # mode), the public key checkers pin (a path or the PEM text), and the governance service.
    signing_key: Path | None = None
    service_public_key: str | None = None
    service_url: str | None = None
    # not from the environment: the project config these settings were read with
    config_file: Path | None = Field(default=None, exclude=True)

    @property
    def prefect_server(self) -> str | None:
        """The Prefect server people use (its UI answers approval pauses); None when runs are local."""
        return None if self.prefect_api_url == self.prefect_local_url else self.prefect_api_url

    @property
    def home_dir(self) -> Path:
        return self.home.resolve()

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return (self.home_dir / "mlartifacts").as_uri()

    @property
    def dvc_remote_url(self) -> str:
        return self.dvc_remote or str(self.home_dir / "dvc-remote")

    @property
    def store_dir(self) -> Path:
        """The artifact store: a git + DVC repo versioning parents, merged models and reports."""
        return self.home_dir / "store"

    @property
    def cache_dir(self) -> Path:
        return self.home_dir / "cache"

    @property
    def audit_log_path(self) -> Path:
        return self.home_dir / "audit-log.jsonl"

    @property
    def signing_key_path(self) -> Path:
        from registry.keys import default_key_path

        return self.signing_key or default_key_path(self.audit_log_path)

    @property
    def recipe_base_dir(self) -> Path | None:
        """Where a recipe's relative model paths start: the project root (the folder of mergeops.yaml),
        so every command reads the same parents from any subfolder; without a config, the working
        directory (as mergekit reads them)."""
        return self.config_file.parent if self.config_file else None

    def check_servers(self) -> "Settings":
        """The MLflow and Prefect servers these settings name answer (ServerUnreachable if not)."""
        from flows.runtime import check_reachable

        self._check_scheme()
        if self.tracking_uri.startswith(("http://", "https://")):
            check_reachable(self.tracking_uri.rstrip("/") + "/health", "the MLflow server", "MLFLOW_TRACKING_URI")
        if self.prefect_server:
            check_reachable(self.prefect_server.rstrip("/") + "/health", "the Prefect server", "PREFECT_API_URL")
        return self

    def _check_scheme(self) -> None:
        scheme = self.tracking_uri.partition(":")[0].partition("+")[0]
        if scheme not in _TRACKING_SCHEMES:
            raise StoreMissing(f"MLFLOW_TRACKING_URI {self.tracking_uri}: not a store MLflow can use; give "
                               "http(s)://HOST:PORT of an MLflow server or a database URI (sqlite, postgresql, mysql)")

    def require_store(self) -> "Settings":
        """Commands that read the registry need one: reading must never create an empty store, and
        an MLflow server that does not answer is one line within seconds, not minutes of retries."""
        self._check_scheme()
        uri = self.tracking_uri
        log = self.audit_log_path
        if log.exists() or log.is_symlink():  # a FIFO, a directory or a link loop: one line, not a hang
            regular_file(log, what="audit log")
        if uri.startswith(("http://", "https://")):
            return self.check_servers()
        if not uri.startswith("sqlite:///"):
            return self  # another database URI: the store answers for itself
        db = Path(uri.removeprefix("sqlite:///"))
        if db.is_file():
            _check_sqlite(db)
            return self
        if self.config_file:
            looked = f"home from {self.config_file}"
        else:
            looked = f"no {CONFIG_NAME} in {Path.cwd()} or above"
        env = os.environ.get("MERGEOPS_HOME")
        raise StoreMissing(
            f"no mergeops store at {self.home_dir} (no {db.name}; {looked}; MERGEOPS_HOME "
            f"{'=' + env if env else 'unset'}): run inside your project, point MERGEOPS_HOME or "
            f"{ENV_VAR} at it, or register a first version with `mergeops run`")


def _check_sqlite(db: Path) -> None:
    """A store's database is an SQLite file: anything else is one line, not an SQLAlchemy traceback."""
    try:
        with open(db, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise StoreMissing(f"{db}: cannot read the store's database ({exc.strerror})") from None
    if head and head != b"SQLite format 3\x00":
        raise StoreMissing(f"{db}: not an SQLite database; point MERGEOPS_HOME at a mergeops store")


def get_settings(config: ProjectConfig | None = None) -> Settings:
    """The environment over the project config (found from the cwd) over the embedded defaults."""
    config = config or load_config()
    try:
        settings = Settings()
    except ValidationError as exc:  # e.g. MERGEOPS_EVALUATION_WORKERS=two: one line, not a traceback
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        var = name if name.isupper() else f"MERGEOPS_{name.upper()}"  # (an alias is the variable itself)
        raise ConfigError(f"{var}={err.get('input')!r}: {err['msg']}") from None
    from_config = {
        # The store sits beside the project config unless the config or the environment moves it.
        "home": Path(config.resolve(config.home) or config.root / _DEFAULT_HOME) if config.path else None,
        "mlflow_tracking_uri": config.tracking_uri,
        "dvc_remote": config.resolve(config.dvc_remote),
        "dvc_remote_endpoint": config.dvc_remote_endpoint,
        "dask_address": config.dask_address,
        "evaluation_workers": config.evaluation_workers,
        "suite": config.resolve_suite(config.suite),
        "policy": config.resolve(config.policy),
        "zoo": config.resolve(config.zoo),
        "service_url": config.service_url,
        "service_public_key": (config.service_public_key if (config.service_public_key or "").lstrip()
                               .startswith("-----BEGIN") else config.resolve(config.service_public_key)),
    }
    update = {k: v for k, v in from_config.items() if v is not None and k not in settings.model_fields_set}
    return settings.model_copy(update={**update, "config_file": config.path})
