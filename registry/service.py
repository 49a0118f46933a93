"""The governance service: the one writer of governed state on a shared MLflow server.

People authenticate to the MLflow server (``mlflow server --app-name basic-auth``) and hold READ on
governed models, so their own edits of ``mergeops.*`` tags and aliases are refused by the server.
The service runs beside it (``mergeops serve``) with the *service account's* MLflow credentials and
the signing key, and is the only one that registers versions, decides and promotes:

- each request carries the caller's MLflow username and password (HTTP basic auth); the service
  asks the MLflow server who that is (``/api/2.0/mlflow/users/current``) and acts for that
  authenticated user, never for a name typed in a flag;
- decisions go through registry/approvals.py with that identity, into one signed audit log kept
  here, in the service's home, where the whole team reads it (``GET /v1/log``);
- a registration is submitted as a run in the caller's own experiment; the service downloads it,
  checks the model against its manifest and lineage, and registers it as the service account with
  the caller as requester (registry/mlflow_registry.py ``register_candidate``).

Endpoints (JSON in and out; errors are ``{"error": line, "exit": 1|2}``):
``GET /v1/health`` (no auth: key id, public key, log name), ``GET /v1/whoami``, ``GET /v1/log``,
``POST /v1/register``, ``/v1/approve``, ``/v1/reject``, ``/v1/promote``, ``/v1/event``.
"""

from __future__ import annotations

import base64
import json
import logging
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from merge.errors import CheckFailed, MergeopsError, UsageError
from registry import approvals
from registry import mlflow_registry as reg
from registry.audit_log import AuditLog
from registry.identity import Actor, normalise
from registry.keys import SigningKey

log = logging.getLogger("mergeops.service")
_MAX_BODY = 1 << 20
_EVENTS = ("verified", "remerge_triggered")


class Unauthorized(UsageError):
    """The caller's credentials were missing or refused by the MLflow server."""


@dataclass
class Service:
    tracking_uri: str
    home: Path
    key: SigningKey
    artifact_location: str | None = None

    def __post_init__(self) -> None:
        self.home = Path(self.home)
        self.log_path = self.home / "audit-log.jsonl"
        self.where = str(self.log_path.resolve())
        self._lock = threading.Lock()  # one registration at a time: find-same then register

    @property
    def log(self) -> AuditLog:
        return AuditLog(self.log_path, key=self.key, public=self.key.public)

    # -- identity --------------------------------------------------------------------------------
    def authenticate(self, header: str | None) -> Actor:
        """The MLflow server's answer to "who is this?" for the request's basic-auth credentials."""
        if not header or not header.startswith("Basic "):
            raise Unauthorized("no credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        req = urllib.request.Request(self.tracking_uri.rstrip("/") + "/api/2.0/mlflow/users/current",
                                     headers={"Authorization": header})
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                user = json.loads(resp.read(65536))["user"]["username"]
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise Unauthorized("the MLflow server refused these credentials") from None
            raise Unauthorized(f"the MLflow server could not say who this is (HTTP {exc.code}); is it running "
                               "with --app-name basic-auth?") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise Unauthorized(f"the MLflow server could not say who this is ({exc})") from None
        return Actor(user, authenticated=True)

    @staticmethod
    def _as(actor: Actor, claimed: str | None, option: str) -> Actor:
        """A typed id must be the authenticated one (so `--reviewer bob` from alice is refused)."""
        if claimed and normalise(claimed, option) != actor.key:
            raise CheckFailed(f"{option} {claimed} is not you: you are authenticated as {actor.id}; "
                              "decisions are made as the signed-in user")
        return actor

    # -- operations ------------------------------------------------------------------------------
    def health(self) -> dict:
        return {"status": "ok", "key_id": self.key.key_id, "public_key": self.key.public.decode(),
                "audit_log": self.where, "tracking_uri": self.tracking_uri}

    def decide(self, actor: Actor, body: dict, decision: str) -> dict:
        name, version = _str(body, "name"), _str(body, "version")
        who = self._as(actor, body.get("reviewer"), "--reviewer")
        act = approvals.approve if decision == "approved" else approvals.reject
        info = act(self.tracking_uri, name, version, reviewer=who, comment=str(body.get("comment") or ""),
                   audit_log_path=self.log_path, public_key=self.key.public)
        return {"name": info.name, "version": info.version, "state": decision, "by": who.id}

    def promote(self, actor: Actor, body: dict) -> dict:
        who = self._as(actor, body.get("by"), "--by")
        info = approvals.promote(self.tracking_uri, _str(body, "name"), _str(body, "version"), by=who,
                                 audit_log_path=self.log_path, public_key=self.key.public)
        return {"name": info.name, "version": info.version, "content_id": info.tag("content_id"), "by": who.id}

    def event(self, actor: Actor, body: dict) -> dict:
        event = _str(body, "event")
        if event not in _EVENTS:
            raise UsageError(f"event {event!r}: only {', '.join(_EVENTS)} are recorded on request")
        data = body.get("data") or {}
        if not isinstance(data, dict):
            raise UsageError("data: a mapping is expected")
        version = body.get("version")
        name = _str(body, "name")
        entry = reg.record_event(self.tracking_uri, name, None if version is None else str(version),
                                 self.log, event, actor=actor, **{k: v for k, v in data.items()
                                                                  if k not in ("model", "version")})
        if event == "verified" and version is not None and data.get("outcome") in ("reproduced", "mismatch"):
            reg.set_tags(self.tracking_uri, reg.get_version(self.tracking_uri, name, str(version)),
                         {"verify": data["outcome"]})
        return {"seq": entry["seq"], "hash": entry["hash"]}

    def register(self, actor: Actor, body: dict) -> dict:
        """Register a submitted run as a governed version, requested by the authenticated caller."""
        from registry.lineage import LineageRecord

        name, run_id = _str(body, "name"), _str(body, "run_id")
        c = reg.client(self.tracking_uri)
        with tempfile.TemporaryDirectory(prefix="mergeops-submission-") as tmp:
            root = Path(c.download_artifacts(run_id, "", tmp))
            lineage = LineageRecord.from_json_bytes((root / "lineage.json").read_bytes())
            lineage = lineage.model_copy(update={"requested_by": actor.id})
            meta = json.loads((root / "submission.json").read_text()) if (root / "submission.json").is_file() else {}
            files = lambda sub: sorted(p for p in (root / sub).glob("*") if p.is_file())  # noqa: E731
            with self._lock:
                from registry.recovery import settle_abandoned

                for line in settle_abandoned(self.tracking_uri, self.log_path, name):  # what a killed service left
                    log.info("%s", line)
                same = _same_version(self.tracking_uri, name, lineage)
                if same is not None:
                    reg.complete_registration(self.tracking_uri, same, self.log_path)
                    return {"name": name, "version": same.version, "status": "unchanged"}
                info = reg.register_candidate(
                    tracking_uri=self.tracking_uri, name=name, model_dir=root / "model", lineage=lineage,
                    audit_log_path=self.log_path, evaluation_files=files("evaluation"), audit_reports=files("audit"),
                    artifact_location=self.artifact_location, license_links=meta.get("license_links") or None,
                    requester=actor, signing_key=self.key)
        self._read_only(name, actor)
        return {"name": info.name, "version": info.version, "status": "registered"}

    def _read_only(self, name: str, actor: Actor) -> None:
        """The requester reads their governed model and cannot edit it, whatever the server's default
        permission: set explicitly through MLflow's permission API (the service manages the model)."""
        from mlflow.server.auth.client import AuthServiceClient

        try:
            AuthServiceClient(self.tracking_uri).grant_user_permission(actor.id, "registered_model", name, "READ")
        except Exception as exc:  # noqa: BLE001  (the server's default permission still applies; say so)
            log.warning("could not set READ for %s on %s (%s); the server's default permission applies",
                        actor.id, name, exc)


def _same_version(tracking_uri: str, name: str, lineage) -> reg.VersionInfo | None:
    """A version already registered from this recipe, these parents and these bytes."""
    want = ",".join(p.content_id for p in lineage.parents)
    return next((v for v in reversed(reg.list_versions(tracking_uri, name)) if v.tag("content_id") == lineage.merged.content_id
                 and v.tag("recipe_sha256") == lineage.recipe.sha256 and v.tag("parents") == want), None)


def _str(body: dict, key: str) -> str:
    value = body.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip() or len(value) > 512:
        raise UsageError(f"{key}: a non-empty string is expected")
    return value.strip()


class _Handler(BaseHTTPRequestHandler):
    service: Service  # set by serve()
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # the service's own logger, not stderr noise per request
        log.info("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="mergeops"')
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, code: int) -> None:
        self._send(status, json.dumps({"error": message, "exit": code}).encode())

    def _handle(self, method: str) -> None:
        svc = self.service
        try:
            if method == "GET" and self.path == "/v1/health":
                return self._send(200, json.dumps(svc.health()).encode())
            actor = svc.authenticate(self.headers.get("Authorization"))
            if method == "GET" and self.path == "/v1/whoami":
                return self._send(200, json.dumps({"user": actor.id}).encode())
            if method == "GET" and self.path == "/v1/log":
                data = svc.log_path.read_bytes() if svc.log_path.exists() else b""
                return self._send(200, data, "application/x-ndjson")
            if method != "POST":
                return self._error(404, f"no such endpoint: {method} {self.path}", 2)
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                return self._error(413, "request too large", 2)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(body, dict):
                raise UsageError("a JSON object is expected")
            routes = {"/v1/approve": lambda: svc.decide(actor, body, "approved"),
                      "/v1/reject": lambda: svc.decide(actor, body, "rejected"),
                      "/v1/promote": lambda: svc.promote(actor, body),
                      "/v1/event": lambda: svc.event(actor, body),
                      "/v1/register": lambda: svc.register(actor, body)}
            if self.path not in routes:
                return self._error(404, f"no such endpoint: POST {self.path}", 2)
            result = routes[self.path]()
            log.info("%s %s by %s: %s", method, self.path, actor.id, result)
            return self._send(200, json.dumps(result).encode())
        except Unauthorized as exc:
            return self._error(401, str(exc), 2)
        except json.JSONDecodeError:
            return self._error(400, "the request body is not JSON", 2)
        except CheckFailed as exc:
            return self._error(409, str(exc), 1)
        except MergeopsError as exc:
            return self._error(400, str(exc), 2)
        except Exception as exc:  # noqa: BLE001  (one line to the caller; the trace stays in the service log)
            log.exception("%s %s failed", method, self.path)
            return self._error(500, f"the governance service failed: {type(exc).__name__}: {exc}", 2)

    def do_GET(self):  # noqa: N802
        self._handle("GET")

    def do_POST(self):  # noqa: N802
        self._handle("POST")


def make_server(service: Service, host: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server for ``service`` (``serve_forever()`` runs it; port 0 picks a free one)."""
    handler = type("Handler", (_Handler,), {"service": service})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def encode_basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
