"""``mergeops repair``: settle what killed runs left on this machine, then check the log.

In order: temp dirs of dead merges and registrations (flows/cleanup.py); copies in the artifact
store that a kill left un-versioned (flows/dvc_store.py ``recover``); registrations cut short,
completed or rolled back from their journal (registry/recovery.py); decisions and promotions the
log holds but MLflow does not mirror yet. Each is also done by the next run of the same recipe
where it matters to that run; repair does all of them at once, for every model.

With a governance service the registrations and the log are the service's: it settles its own
before each registration, so repair does the local part only.
"""

from __future__ import annotations

from flows.cleanup import sweep_dead_temp_dirs
from flows.dvc_store import DvcStore
from flows.settings import Settings


def repair(settings: Settings, public_key: bytes | None = None) -> list[str]:
    """Every repair done, one line each (empty: nothing was left half done). ``public_key`` checks
    the log's signatures (the pinned key, else the store's own)."""
    lines = [f"removed {d} (temp dir of a dead run)" for d in sweep_dead_temp_dirs(settings.cache_dir / "merges")]
    lines += DvcStore(settings.store_dir, settings.dvc_remote_url, settings.dvc_remote_endpoint).recover()
    if settings.service_url:
        return lines
    from registry.approvals import open_log
    from registry.recovery import complete_mirrors, settle_abandoned

    lines += settle_abandoned(settings.tracking_uri, settings.audit_log_path)
    if settings.audit_log_path.exists():
        lines += complete_mirrors(settings.tracking_uri, open_log(settings.audit_log_path, public_key))
    return lines
