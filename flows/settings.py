"""One settings object, read from the environment (prefix ``MERGEOPS_``, plus the tools' own vars).

Embedded defaults run everything on one machine: state under ``./.mergeops``, MLflow on a sqlite
file with a local artifact root, Prefect ephemeral, a local DVC remote folder. At scale the same
code reads ``MLFLOW_TRACKING_URI`` (an MLflow server), ``PREFECT_API_URL`` (a Prefect server) and
``MERGEOPS_DVC_REMOTE`` (e.g. an S3 URL); nothing hard-codes a path or a host.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MERGEOPS_", extra="ignore")

    home: Path = Path(".mergeops")
    # None means the embedded default: sqlite:///<home>/mlflow.db with artifacts under <home>.
    mlflow_tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "MERGEOPS_MLFLOW_TRACKING_URI")
    )
    # None means Prefect runs ephemeral (no server); set to pause flows for approval in the UI.
    prefect_api_url: str | None = Field(default=None, validation_alias=AliasChoices("PREFECT_API_URL"))
    dvc_remote: str | None = None  # None means <home>/dvc-remote
    registered_model_prefix: str = ""

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
    def cache_dir(self) -> Path:
        return self.home_dir / "cache"

    @property
    def audit_log_path(self) -> Path:
        return self.home_dir / "audit-log.jsonl"


def get_settings() -> Settings:
    return Settings()
