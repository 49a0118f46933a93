"""The approval step: a Prefect pause with a typed input when a Prefect server is configured.

With a server (``PREFECT_API_URL``), the flow run pauses and waits for an ``ApprovalInput``
(reviewer, decision, comment) given in the Prefect UI or sent by ``resume_with_decision``; the
decision goes through registry.approvals, so the same four-eyes and gate rules apply as for
``mergeops approve``. A refused decision (the requester reviewing their own version, a rejection
without a comment) is logged and the run waits again. A decision made meanwhile with
``mergeops approve|reject`` is what the run reports when it resumes or times out. Without a server
(Prefect ephemeral, or the command's own local API: flows/runtime.py) nobody can resume the run
from outside, so it ends with the version awaiting approval and ``mergeops approve`` completes the
same transition.
"""

from __future__ import annotations

from typing import Literal

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from flows.settings import get_settings


class ApprovalInput(RunInput):
    reviewer: str
    decision: Literal["approve", "reject"]
    comment: str = ""


def await_approval(name: str, version: str, requested_by: str, *, timeout_s: int = 3600) -> str:
    """Return ``approved``, ``rejected`` or ``awaiting_approval`` (ephemeral mode, or no answer in time)."""
    from merge.errors import MergeopsError

    log = get_run_logger()
    settings = get_settings()
    if not settings.prefect_server:
        log.info("%s v%s awaits approval: mergeops approve %s %s --reviewer WHO", name, version, name, version)
        return "awaiting_approval"
    while True:  # each pause gets a fresh key: a refused answer must not be replayed
        description = (f"Review **{name} v{version}** (requested by {requested_by}). "
                       "The reviewer must be someone else; a rejection needs a comment.")
        try:
            answer = pause_flow_run(wait_for_input=ApprovalInput.with_initial_data(description=description,
                                                                                   decision="approve"),
                                    timeout=timeout_s, poll_interval=2)
        except FlowPauseTimeout:
            state = current_state(name, version)
            log.info("no decision on %s v%s in the run's time; it is %s", name, version, state)
            return state
        state = current_state(name, version)
        if state != "awaiting_approval":  # decided meanwhile with `mergeops approve|reject`
            return state
        try:
            return decide(name, version, answer.reviewer, answer.decision, answer.comment)
        except MergeopsError as exc:  # four-eyes, a gate-failed version, a rejection without a comment
            log.warning("decision refused, waiting for another: %s", exc)


def current_state(name: str, version: str) -> str:
    """``approved``, ``rejected`` or ``awaiting_approval``, as the audit log holds it now."""
    from flows.governance import Governance

    state = Governance(get_settings()).state(name, version)
    return "awaiting_approval" if state == "pending" else state


def decide(name: str, version: str, reviewer: str, decision: str, comment: str) -> str:
    """Apply a reviewer's decision through the registry's rules; return the new state.

    Prefect's form is not authenticated (anyone who reaches the UI can type any name), so with a
    governance service the form cannot decide: the reviewer runs `mergeops approve` signed in."""
    from flows.governance import Governance
    from merge.errors import UsageError

    governance = Governance(get_settings())
    if governance.service is not None:
        raise UsageError(f"the Prefect form is not authenticated; decide with `mergeops approve {name} {version}` "
                         "as your signed-in MLflow user")
    governance.decide(decision, name, version, reviewer, comment)
    return "approved" if decision == "approve" else "rejected"


def resume_with_decision(flow_run_id: str, reviewer: str, decision: str, comment: str = "") -> None:
    """Resume a paused pipeline run with a decision, as the Prefect UI's form does."""
    from prefect.flow_runs import resume_flow_run

    resume_flow_run(flow_run_id, run_input={"reviewer": reviewer, "decision": decision, "comment": comment})
