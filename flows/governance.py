"""Where governed state is written from this machine: the governance service, or the local store.

With ``service_url`` (``MERGEOPS_SERVICE_URL`` or ``mergeops.yaml``) every decision, registration
and event goes to the service (registry/service.py) with the caller's MLflow credentials, and the
audit log is the service's. Without it (embedded mode: one person, a sqlite store) this process is
its own service: the log and the signing key are under the home, and ids are as typed,
unauthenticated, which the commands say plainly.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from flows.settings import Settings
from merge.errors import UsageError

UNAUTHENTICATED = "unauthenticated: embedded store, no governance service"


@dataclass
class Outcome:
    name: str
    version: str
    who: str
    content_id: str = ""
    authenticated: bool = True

    @property
    def by(self) -> str:
        """Who did it, saying plainly when nobody vouched for the name."""
        return self.who if self.authenticated else f"{self.who} ({UNAUTHENTICATED})"


class Governance:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.service = None
        if settings.service_url:
            from registry.service_client import ServiceClient

            self.service = ServiceClient(settings.service_url)

    def public_key(self) -> bytes | None:
        """The key log entries and models are checked with: the pinned one, else the store's own."""
        from registry.errors import SigningKeyError
        from registry.keys import read_public_key, trusted_public_key

        s = self.settings
        if self.service is not None and not s.service_public_key:
            key = self.service.health()["public_key"].encode()
            click.echo("note: the service's public key is not pinned (service_public_key); checking with the key "
                       "it presents", err=True)
            return read_public_key(key.decode())
        try:
            return trusted_public_key(s.service_public_key, s.signing_key_path)
        except SigningKeyError:
            if s.audit_log_path.exists():
                raise
            return None  # nothing signed yet

    def _typed(self, who: str | None, option: str) -> str:
        if not who:
            raise UsageError(f"{option} is required with an embedded store (no governance service): name "
                             f"yourself, e.g. {option} bob@example.com")
        return who

    def requester(self, typed: str | None) -> str | None:
        """Who asks for a run: with a service, the signed-in user (a different --requested-by is
        refused); embedded, the name as typed (None: the caller's default)."""
        if self.service is None:
            return typed
        from registry.identity import same_person

        me = self.service.whoami()
        if typed and not same_person(typed, me):
            raise UsageError(f"--requested-by {typed} is not you: you are signed in as {me}; runs are requested "
                             "by the signed-in user")
        return me

    def register(self, *, signing_key_path: Path, **kwargs):
        """Register a candidate: through the service (a submission it checks, signs and registers
        as the service account), or straight into the embedded store, signed with its own key."""
        from registry.mlflow_registry import get_version, register_candidate

        if self.service is None:
            from registry.keys import load_signing_key

            return register_candidate(signing_key=load_signing_key(signing_key_path, create=True), **kwargs)
        from registry.service_client import submit_registration

        answer = submit_registration(self.service, kwargs["tracking_uri"], name=kwargs["name"],
                                     model_dir=kwargs["model_dir"], lineage=kwargs["lineage"],
                                     evaluation_files=kwargs.get("evaluation_files", ()),
                                     audit_reports=kwargs.get("audit_reports", ()),
                                     license_links=kwargs.get("license_links"))
        return get_version(kwargs["tracking_uri"], answer["name"], answer["version"])

    def decide(self, decision: str, name: str, version: str, reviewer: str | None, comment: str) -> Outcome:
        if self.service is not None:
            call = self.service.approve if decision == "approve" else self.service.reject
            answer = call(name, version, reviewer, comment)
            return Outcome(answer["name"], answer["version"], answer["by"])
        from registry import approvals

        act = approvals.approve if decision == "approve" else approvals.reject
        who = self._typed(reviewer, "--reviewer")
        info = act(self.settings.tracking_uri, name, version, reviewer=who, comment=comment,
                   audit_log_path=self.settings.audit_log_path, public_key=self.public_key())
        return Outcome(info.name, info.version, who, authenticated=False)

    def promote(self, name: str, version: str, by: str | None) -> Outcome:
        if self.service is not None:
            answer = self.service.promote(name, version, by)
            return Outcome(answer["name"], answer["version"], answer["by"], answer["content_id"])
        from registry import approvals

        who = self._typed(by, "--by")
        info = approvals.promote(self.settings.tracking_uri, name, version, by=who,
                                 audit_log_path=self.settings.audit_log_path, public_key=self.public_key())
        return Outcome(info.name, info.version, who, info.tag("content_id"), authenticated=False)

    def record(self, name: str, version: str | None, event: str, **data) -> None:
        """A ``verified`` or ``remerge_triggered`` entry, by whoever runs this."""
        if self.service is not None:
            self.service.event(name, version, event, **data)
            return
        from registry.mlflow_registry import record_event

        record_event(self.settings.tracking_uri, name, version, self.settings.audit_log_path, event, **data)

    def record_verified(self, info, data: dict) -> None:
        """A ``verify`` outcome: the ``verified`` entry and the version's ``verify`` tag."""
        if self.service is not None:
            self.service.event(info.name, info.version, "verified", **data)
            return
        from registry.mlflow_registry import record_event, set_tags

        record_event(self.settings.tracking_uri, info.name, info.version, self.settings.audit_log_path, "verified",
                     **data)
        set_tags(self.settings.tracking_uri, info, {"verify": data["outcome"]})

    def entries(self) -> list[dict]:
        """The audit log's entries, checked (chain and signatures)."""
        from registry.audit_log import AuditLog

        if self.service is None:
            return AuditLog(self.settings.audit_log_path, public=self.public_key()).entries()
        from registry.service_client import fetch_log

        with tempfile.TemporaryDirectory(prefix="mergeops-log-") as tmp:
            path, _ = fetch_log(self.service, Path(tmp) / "audit-log.jsonl")
            return AuditLog(path, public=self.public_key()).entries()

    def state(self, name: str, version: str) -> str:
        """``approved``, ``rejected`` or ``pending``, as the audit log holds it."""
        from registry.approvals import state

        return state(self.entries(), name, str(version))

    def verify_log(self) -> tuple[str, int, int]:
        """``(log name, entries, MLflow copies)``; AuditLogTampered naming every drift."""
        from registry.audit_log import AuditLog
        from registry.mlflow_registry import verify_audit_log

        s = self.settings
        if self.service is None:
            log = AuditLog(s.audit_log_path, public=self.public_key())
            count, anchors = verify_audit_log(s.tracking_uri, log)
            return str(s.audit_log_path), count, anchors
        from registry.service_client import fetch_log

        with tempfile.TemporaryDirectory(prefix="mergeops-log-") as tmp:
            path, health = fetch_log(self.service, Path(tmp) / "audit-log.jsonl")
            log = AuditLog(path, public=self.public_key())
            count, anchors = verify_audit_log(s.tracking_uri, log, where=health["audit_log"])
        return f"{self.settings.service_url} ({health['audit_log']})", count, anchors
