"""The CLI's side of the governance service (registry/service.py): the same operations as embedded
mode, sent with the caller's MLflow credentials so the service acts for the authenticated user.

Credentials are MLflow's own: ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` (the
service asks the MLflow server who that basic-auth user is). A refusal comes back as the service's
one line and exit code.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from merge.errors import UsageError
from registry.errors import ApprovalRefused, RegistryError
from registry.service import encode_basic

_TIMEOUT_S = 30
_MAX_LOG = 1 << 30


class ServiceError(RegistryError):
    """The governance service did not answer, or answered something that is not the service."""


class ServiceClient:
    def __init__(self, url: str, username: str | None = None, password: str | None = None):
        self.url = url.rstrip("/")
        self.username = username if username is not None else os.environ.get("MLFLOW_TRACKING_USERNAME")
        self.password = password if password is not None else os.environ.get("MLFLOW_TRACKING_PASSWORD")

    def _call(self, method: str, path: str, body: dict | None = None, *, auth: bool = True,
              timeout: float = _TIMEOUT_S, raw: bool = False):
        headers = {"Content-Type": "application/json"}
        if auth:
            if not self.username or not self.password:
                raise UsageError("the governance service needs your MLflow credentials: set MLFLOW_TRACKING_USERNAME "
                                 "and MLFLOW_TRACKING_PASSWORD")
            headers["Authorization"] = encode_basic(self.username, self.password)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read(_MAX_LOG + 1)
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read(65536))
                message, code = str(answer["error"]), int(answer.get("exit", 2))
            except (ValueError, KeyError, TypeError):
                raise ServiceError(f"{self.url}{path}: HTTP {exc.code} from something that is not the governance "
                                   "service (check service_url)") from None
            raise (ApprovalRefused if code == 1 else UsageError)(message) from None
        except (OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(f"the governance service at {self.url} did not answer ({reason}); check service_url "
                               "(MERGEOPS_SERVICE_URL) and that `mergeops serve` runs") from None
        if raw:
            return payload
        try:
            return json.loads(payload)
        except ValueError:
            raise ServiceError(f"{self.url}{path}: the answer is not JSON; is service_url the governance service?") from None

    def health(self) -> dict:
        return self._call("GET", "/v1/health", auth=False)

    def whoami(self) -> str:
        return self._call("GET", "/v1/whoami")["user"]

    def log_bytes(self) -> bytes:
        return self._call("GET", "/v1/log", raw=True, timeout=120)

    def approve(self, name: str, version: str, reviewer: str | None, comment: str) -> dict:
        return self._call("POST", "/v1/approve", {"name": name, "version": str(version), "reviewer": reviewer,
                                                  "comment": comment})

    def reject(self, name: str, version: str, reviewer: str | None, comment: str) -> dict:
        return self._call("POST", "/v1/reject", {"name": name, "version": str(version), "reviewer": reviewer,
                                                 "comment": comment})

    def promote(self, name: str, version: str, by: str | None) -> dict:
        return self._call("POST", "/v1/promote", {"name": name, "version": str(version), "by": by})

    def event(self, name: str, version: str | None, event: str, **data) -> dict:
        return self._call("POST", "/v1/event", {"name": name, "version": version, "event": event, "data": data})

    def register(self, name: str, run_id: str) -> dict:
        return self._call("POST", "/v1/register", {"name": name, "run_id": run_id}, timeout=3600)


def submit_registration(service: ServiceClient, tracking_uri: str, *, name: str, model_dir: Path, lineage,
                        evaluation_files=(), audit_reports=(), license_links: dict | None = None) -> dict:
    """Log a submission run in the caller's own experiment (``mergeops-requests/<user>``) and ask
    the service to register it; the service checks it and registers it as the service account."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    user = service.whoami()
    c = MlflowClient(tracking_uri)
    experiment = f"mergeops-requests/{user}"
    found = c.get_experiment_by_name(experiment)
    try:
        exp_id = found.experiment_id if found else c.create_experiment(experiment)
    except MlflowException:
        exp_id = c.get_experiment_by_name(experiment).experiment_id
    run = c.create_run(exp_id, run_name=f"{name}-{lineage.merged.content_id[:12]}")
    try:
        c.log_artifacts(run.info.run_id, str(model_dir), "model")
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "lineage.json").write_bytes(lineage.to_json_bytes())
            (Path(tmp) / "submission.json").write_text(json.dumps({"name": name, "license_links": license_links or {}}))
            c.log_artifact(run.info.run_id, str(Path(tmp) / "lineage.json"))
            c.log_artifact(run.info.run_id, str(Path(tmp) / "submission.json"))
        for path in evaluation_files:
            c.log_artifact(run.info.run_id, str(path), "evaluation")
        for path in audit_reports:
            c.log_artifact(run.info.run_id, str(path), "audit")
        c.set_terminated(run.info.run_id)
    except BaseException:
        c.set_terminated(run.info.run_id, status="FAILED")
        raise
    return service.register(name, run.info.run_id)


def fetch_log(service: ServiceClient, dst: Path) -> tuple[Path, dict]:
    """The service's audit log copied to ``dst`` and its health record (key, log name)."""
    health = service.health()
    dst.write_bytes(service.log_bytes())
    return dst, health

