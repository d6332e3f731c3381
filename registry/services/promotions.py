"""Promotion requests: the gated, audited path that moves an alias to a new version.

States and transitions, each recorded as an audit event and an outbox event::

    requested -> evaluating -> rejected
                            -> awaiting_approval -> approved -> promoted
                            -> approved -> promoted            (unprotected alias)
                            -> requested                       (retry, alias moved)
                            -> failed                          (worker errors, no attempts left)

Workers claim requests so that none runs twice at once: the claim locks the
row (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite transactions already hold
the write lock from their start) and sets a lease. A request whose lease
expired is claimable again, so a dead worker's request is picked up by another,
up to MAX_ATTEMPTS claims.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from registry.db.base import utcnow
from registry.db.models import (
    Adapter,
    AdapterVersion,
    AuditEvent,
    DatasetVersion,
    Evaluation,
    PromotionRequest,
    VersionDataset,
)
from registry.errors import Conflict, Forbidden, InvalidInput, NotFound
from registry.services.actors import Actor
from registry.services.aliases import get_alias_version_id, is_protected, move_alias
from registry.services.audit import record_event
from registry.services.datasets import get_dataset_row
from registry.services.evaluations import evaluations_by_ids, get_evaluation_row
from registry.services.gates import decide, effective_policy
from registry.services.names import check_alias, check_name, parse_dataset_reference
from registry.services.versions import get_adapter_row, get_version_row
from registry.services.webhooks import enqueue_event

log = logging.getLogger(__name__)

OPEN_STATES = ("requested", "evaluating", "awaiting_approval", "approved")
FINAL_STATES = ("rejected", "promoted", "failed")
ALLOWED_TRANSITIONS = {
    "requested": {"evaluating", "failed"},
    "evaluating": {
        "evaluating",
        "requested",
        "rejected",
        "awaiting_approval",
        "approved",
        "failed",
    },
    "awaiting_approval": {"approved", "rejected", "requested"},
    "approved": {"promoted"},
}
# Claims of one request before it fails for good (crashed or timed-out workers).
MAX_ATTEMPTS = 3
MAX_LEASE_SECONDS = 24 * 3600
MAX_DATASETS = 16
MAX_LIST = 500
# Requests whose lease ran out too often are failed while looking for one to claim.
_CLAIM_SCAN = 20


def request_promotion(
    session: Session,
    actor: Actor,
    *,
    ref: str,
    alias: str,
    datasets: list[str],
    split: str,
    reason: str | None = None,
) -> dict[str, Any]:
    """Open a promotion of version ``ref`` to ``alias``, evaluated on ``datasets``.

    Without datasets, the version's own (training) datasets are used. Raises
    NotFound for an unknown version or dataset, InvalidInput for a missing
    split, Conflict when the alias already points at the version or another
    request for the alias is still open.
    """
    actor.require("writer")
    check_alias(alias)
    check_name(split, what="split")
    version = get_version_row(session, ref)
    adapter = _lock_adapter(session, version.adapter_id)
    dataset_refs = _check_datasets(session, version, datasets, split)
    if get_alias_version_id(session, adapter.id, alias) == version.id:
        raise Conflict(f"{adapter.name}@{alias} already points at version {version.version}")
    _check_no_open_request(session, adapter, alias)
    row = PromotionRequest(
        adapter_id=adapter.id,
        version_id=version.id,
        alias=alias,
        state="requested",
        datasets=dataset_refs,
        split=split,
        reason=reason,
        requested_by=actor.name,
        attempts=0,
    )
    session.add(row)
    session.flush()
    _record(session, actor, row, previous=None, details={"datasets": dataset_refs, "split": split})
    return promotion_dict(session, row)


def _lock_adapter(session: Session, adapter_id: int) -> Adapter:
    # Serializes requests for one adapter, so two cannot both see "no open request".
    return session.scalars(
        select(Adapter)
        .where(Adapter.id == adapter_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _check_datasets(
    session: Session, version: AdapterVersion, datasets: list[str], split: str
) -> list[str]:
    if not datasets:
        rows = session.scalars(
            select(DatasetVersion)
            .join(VersionDataset, VersionDataset.dataset_id == DatasetVersion.id)
            .where(VersionDataset.version_id == version.id)
            .order_by(DatasetVersion.name, DatasetVersion.version)
        ).all()
        if not rows:
            raise InvalidInput(
                "this version names no datasets to evaluate on; pass --dataset NAME@VERSION"
            )
    else:
        rows = [get_dataset_row(session, *parse_dataset_reference(ref)) for ref in datasets]
    refs = list(dict.fromkeys(f"{row.name}@{row.version}" for row in rows))
    if len(refs) > MAX_DATASETS:
        raise InvalidInput(f"{len(refs)} datasets given; a promotion takes at most {MAX_DATASETS}")
    for row in rows:
        if row.splits and split not in row.splits:
            raise InvalidInput(
                f"dataset {row.name}@{row.version} has no split {split!r}; its splits are "
                f"{', '.join(sorted(row.splits))} (choose one with --split)"
            )
    return refs


def _check_no_open_request(session: Session, adapter: Adapter, alias: str) -> None:
    open_row = session.scalar(
        select(PromotionRequest).where(
            PromotionRequest.adapter_id == adapter.id,
            PromotionRequest.alias == alias,
            PromotionRequest.state.in_(OPEN_STATES),
        )
    )
    if open_row is not None:
        raise Conflict(
            f"promotion {open_row.id} of {adapter.name}@{alias} is still {open_row.state}; wait "
            f"for it to finish (`adapterreg promotion show {open_row.id}`)"
        )


def claim_promotion(
    session: Session,
    actor: Actor,
    *,
    worker: str,
    lease_seconds: int,
    request_id: int | None = None,
) -> dict[str, Any] | None:
    """Claim the oldest claimable request (or ``request_id``) for ``worker``; None if none.

    Claimable are requests in ``requested`` and ``evaluating`` ones whose lease
    expired. A request already claimed MAX_ATTEMPTS times fails instead, as
    does one whose alias another change already moved to its version.
    """
    actor.require("writer")
    check_name(worker, what="worker name")
    _check_lease(lease_seconds)
    for _ in range(_CLAIM_SCAN):
        row = session.scalar(_claimable(request_id))
        if row is None:
            return None
        error = _unclaimable_reason(session, row)
        if error is not None:
            row.error = error
            row.claimed_by = None
            row.lease_expires_at = None
            _transition(session, actor, row, "failed")
            continue
        previous_worker = row.claimed_by
        row.claimed_by = worker
        row.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)
        row.attempts += 1
        row.current_version_id = get_alias_version_id(session, row.adapter_id, row.alias)
        _transition(
            session,
            actor,
            row,
            "evaluating",
            details={"worker": worker, "attempt": row.attempts, "previous_worker": previous_worker},
        )
        return claim_dict(session, row)
    return None


def _unclaimable_reason(session: Session, row: PromotionRequest) -> str | None:
    """Return why a claimable request must fail instead, or None when it can run."""
    if row.attempts >= MAX_ATTEMPTS:
        return (
            f"claimed {row.attempts} times without a result (last worker "
            f"{row.claimed_by!r}); check the workers' logs"
        )
    if get_alias_version_id(session, row.adapter_id, row.alias) == row.version_id:
        return f"the alias {row.alias!r} was moved to this version by another change"
    return None


def _claimable(request_id: int | None) -> Any:
    now = utcnow()
    query = (
        select(PromotionRequest)
        .where(
            or_(
                PromotionRequest.state == "requested",
                and_(
                    PromotionRequest.state == "evaluating", PromotionRequest.lease_expires_at < now
                ),
            )
        )
        .order_by(PromotionRequest.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    if request_id is not None:
        query = query.where(PromotionRequest.id == request_id)
    return query


def _check_lease(lease_seconds: int) -> None:
    if not 1 <= lease_seconds <= MAX_LEASE_SECONDS:
        raise InvalidInput(f"invalid lease of {lease_seconds} s: use 1 to {MAX_LEASE_SECONDS}")


def claim_dict(session: Session, row: PromotionRequest) -> dict[str, Any]:
    """Return the request as a worker needs it: what to evaluate, on what, until when."""
    candidate = session.get(AdapterVersion, row.version_id)
    assert candidate is not None
    current = (
        session.get(AdapterVersion, row.current_version_id) if row.current_version_id else None
    )
    adapter = session.get(Adapter, row.adapter_id)
    assert adapter is not None
    return {
        **promotion_dict(session, row),
        "candidate": f"{adapter.name}@{candidate.version}",
        "current": f"{adapter.name}@{current.version}" if current is not None else None,
    }


def renew_lease(
    session: Session, actor: Actor, *, request_id: int, worker: str, lease_seconds: int
) -> dict[str, Any]:
    """Extend ``worker``'s lease; Conflict when the request is no longer its own."""
    actor.require("writer")
    _check_lease(lease_seconds)
    row = _lock(session, request_id)
    _check_claim(row, worker)
    row.lease_expires_at = utcnow() + timedelta(seconds=lease_seconds)
    row.updated_at = utcnow()
    return promotion_dict(session, row)


def _lock(session: Session, request_id: int) -> PromotionRequest:
    row = session.scalar(
        select(PromotionRequest)
        .where(PromotionRequest.id == request_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise NotFound(f"promotion request {request_id} not found")
    return row


def _check_claim(row: PromotionRequest, worker: str) -> None:
    if row.state != "evaluating" or row.claimed_by != worker:
        raise Conflict(
            f"promotion {row.id} is no longer claimed by worker {worker!r} (state {row.state}, "
            f"claimed by {row.claimed_by!r}); drop this work, another worker owns it"
        )


def submit_results(
    session: Session, actor: Actor, *, request_id: int, worker: str, evaluation_ids: list[int]
) -> dict[str, Any]:
    """Apply the gate to the worker's evaluations and move the request on.

    A failing gate rejects the request. A passing one promotes it at once, or
    waits for an approval on a protected alias or a policy that requires one.
    If the alias moved since the claim, the request goes back to ``requested``
    to be evaluated against the new version. Raises InvalidInput when an
    evaluation is missing or belongs to another subject, dataset or split.
    """
    actor.require("writer")
    row = _lock(session, request_id)
    _check_claim(row, worker)
    roles = _classify(session, row, evaluation_ids)
    row.claimed_by = None
    row.lease_expires_at = None
    if _requeue_if_alias_moved(session, actor, row):
        return promotion_dict(session, row)
    adapter = session.get(Adapter, row.adapter_id)
    assert adapter is not None
    policy = effective_policy(session, adapter=adapter.name, alias=row.alias)
    decision = decide(
        policy,
        task=roles["task"],
        datasets=row.datasets,
        candidate=roles["candidate"],
        current=roles["current"] if row.current_version_id is not None else None,
        base=roles["base"],
    )
    decision["evaluation_ids"] = roles["ids"]
    row.decision = decision
    summary = {"passed": decision["passed"], "metric": decision["metric"], "policy": policy.scope}
    if not decision["passed"]:
        row.decided_by = "gate"
        _transition(session, actor, row, "rejected", details=summary)
    elif is_protected(row.alias) or policy.require_approval:
        _transition(session, actor, row, "awaiting_approval", details=summary)
    else:
        row.decided_by = "gate"
        _transition(session, actor, row, "approved", details=summary)
        _promote(session, actor, row)
    return promotion_dict(session, row)


def _classify(session: Session, row: PromotionRequest, ids: list[int]) -> dict[str, Any]:
    """Sort the evaluations into candidate, current and base metrics per dataset."""
    candidate = session.get(AdapterVersion, row.version_id)
    assert candidate is not None
    roles: dict[str, Any] = {
        "candidate": {},
        "current": {},
        "base": {},
        "task": None,
        "ids": {"candidate": [], "current": [], "base": []},
    }
    for evaluation_id in dict.fromkeys(ids):
        evaluation = get_evaluation_row(session, evaluation_id)
        role = _role_of(evaluation, row, candidate.base_model_id)
        dataset = _dataset_ref(session, evaluation, row)
        if roles["task"] not in (None, evaluation.task):
            raise InvalidInput(
                f"evaluations of promotion {row.id} mix tasks {roles['task']!r} and "
                f"{evaluation.task!r}; evaluate every subject as the same task"
            )
        roles["task"] = evaluation.task
        roles[role][dataset] = evaluation.metrics
        roles["ids"][role].append(evaluation.id)
    _check_complete(row, roles)
    return roles


def _role_of(evaluation: Evaluation, row: PromotionRequest, base_model_id: int) -> str:
    if evaluation.subject_type == "adapter_version":
        if evaluation.version_id == row.version_id:
            return "candidate"
        if evaluation.version_id == row.current_version_id:
            return "current"
    elif evaluation.subject_type == "base_model" and evaluation.base_model_id == base_model_id:
        return "base"
    raise InvalidInput(
        f"evaluation {evaluation.id} is of a {evaluation.subject_type} that promotion {row.id} "
        "does not compare; send evaluations of the candidate, the current version and the base"
    )


def _dataset_ref(session: Session, evaluation: Evaluation, row: PromotionRequest) -> str:
    dataset = session.get(DatasetVersion, evaluation.dataset_id)
    assert dataset is not None
    ref = f"{dataset.name}@{dataset.version}"
    if ref not in row.datasets or evaluation.split != row.split:
        raise InvalidInput(
            f"evaluation {evaluation.id} is on {ref} split {evaluation.split!r}; promotion "
            f"{row.id} evaluates {', '.join(row.datasets)} split {row.split!r}"
        )
    return ref


def _check_complete(row: PromotionRequest, roles: dict[str, Any]) -> None:
    needed = ["candidate", "base"] + (["current"] if row.current_version_id is not None else [])
    missing = [
        f"{role} on {ref}" for role in needed for ref in row.datasets if ref not in roles[role]
    ]
    if missing:
        raise InvalidInput(
            f"promotion {row.id} lacks evaluations of: {', '.join(missing)}; evaluate those "
            "and send all ids together"
        )


def _requeue_if_alias_moved(session: Session, actor: Actor, row: PromotionRequest) -> bool:
    now_at = get_alias_version_id(session, row.adapter_id, row.alias)
    if now_at == row.current_version_id:
        return False
    row.error = "the alias moved after the evaluation; evaluating again against its new version"
    _transition(
        session,
        actor,
        row,
        "requested",
        details={"evaluated_against": row.current_version_id, "alias_now_at": now_at},
    )
    return True


def _promote(session: Session, actor: Actor, row: PromotionRequest) -> None:
    version = session.get(AdapterVersion, row.version_id)
    assert version is not None and row.decision is not None
    ids = row.decision["evaluation_ids"]
    evidence = {
        "kind": "promotion",
        "promotion_request_id": row.id,
        "evaluation_ids": sorted({i for role_ids in ids.values() for i in role_ids}),
        "evaluation_roles": ids,
        "gate": {
            "passed": row.decision["passed"],
            "metric": row.decision["metric"],
            "policy": row.decision["policy"]["scope"],
            "checks": row.decision["checks"],
        },
        "requested_by": row.requested_by,
        "decided_by": row.decided_by,
    }
    move_alias(
        session,
        actor,
        version=version,
        alias=row.alias,
        reason=row.reason or f"promotion {row.id}",
        evidence=evidence,
        promotion_request_id=row.id,
    )
    _transition(session, actor, row, "promoted")


def fail_promotion(
    session: Session, actor: Actor, *, request_id: int, worker: str, error: str, retry: bool
) -> dict[str, Any]:
    """Record a worker's error: back to ``requested`` while attempts remain and ``retry``."""
    actor.require("writer")
    row = _lock(session, request_id)
    _check_claim(row, worker)
    row.error = error[:2000]
    row.claimed_by = None
    row.lease_expires_at = None
    state = "requested" if retry and row.attempts < MAX_ATTEMPTS else "failed"
    _transition(session, actor, row, state, details={"error": row.error, "worker": worker})
    return promotion_dict(session, row)


def approve_promotion(
    session: Session, actor: Actor, *, request_id: int, reason: str | None = None
) -> dict[str, Any]:
    """Approve a request awaiting approval and move the alias, in one transaction.

    Needs role approver and a user other than the requester (Forbidden otherwise);
    Conflict unless the request awaits approval. If the alias moved since the
    evaluation, the request goes back to ``requested`` instead.
    """
    actor.require("approver")
    row = _lock(session, request_id)
    _check_awaiting(row, "approved")
    if actor.name == row.requested_by:
        raise Forbidden(
            f"user {actor.name!r} requested promotion {row.id} and cannot approve it; another "
            "user with role approver must"
        )
    if _requeue_if_alias_moved(session, actor, row):
        return promotion_dict(session, row)
    row.decided_by = actor.name
    _transition(session, actor, row, "approved", details={"reason": reason})
    _promote(session, actor, row)
    return promotion_dict(session, row)


def reject_promotion(
    session: Session, actor: Actor, *, request_id: int, reason: str
) -> dict[str, Any]:
    """Reject a request awaiting approval; needs role approver and a reason."""
    actor.require("approver")
    if not reason.strip():
        raise InvalidInput("a rejection needs a reason; pass --reason TEXT")
    row = _lock(session, request_id)
    _check_awaiting(row, "rejected")
    row.decided_by = actor.name
    row.error = reason
    _transition(session, actor, row, "rejected", details={"reason": reason})
    return promotion_dict(session, row)


def _check_awaiting(row: PromotionRequest, verb: str) -> None:
    if row.state != "awaiting_approval":
        raise Conflict(
            f"promotion {row.id} is {row.state}; only a request awaiting approval can be {verb}"
        )


def _transition(
    session: Session,
    actor: Actor,
    row: PromotionRequest,
    state: str,
    *,
    details: dict[str, Any] | None = None,
) -> None:
    previous = row.state
    if state not in ALLOWED_TRANSITIONS.get(previous, set()):
        raise Conflict(f"promotion {row.id} cannot go from {previous} to {state}")
    row.state = state
    row.updated_at = utcnow()
    session.flush()
    _record(session, actor, row, previous=previous, details=details or {})


def _record(
    session: Session,
    actor: Actor,
    row: PromotionRequest,
    *,
    previous: str | None,
    details: dict[str, Any],
) -> None:
    """Write the transition to the audit log and the outbox, in the caller's transaction."""
    adapter = session.get(Adapter, row.adapter_id)
    version = session.get(AdapterVersion, row.version_id)
    assert adapter is not None and version is not None
    payload = {
        "promotion_request_id": row.id,
        "adapter": adapter.name,
        "version": version.version,
        "alias": row.alias,
        "from_state": previous,
        "state": row.state,
        "actor": actor.name,
        **details,
    }
    record_event(
        session,
        actor,
        f"promotion.{row.state}",
        entity_type="promotion_request",
        entity_id=str(row.id),
        details=payload,
    )
    enqueue_event(session, f"promotion.{row.state}", payload)


def get_promotion(session: Session, request_id: int) -> dict[str, Any]:
    """Return one request with its evaluations and its audit trail."""
    row = session.get(PromotionRequest, request_id)
    if row is None:
        raise NotFound(f"promotion request {request_id} not found")
    ids = row.decision["evaluation_ids"] if row.decision else {}
    flat = [i for role in ("candidate", "current", "base") for i in ids.get(role, [])]
    return {
        **promotion_dict(session, row),
        "evaluations": evaluations_by_ids(session, flat),
        "events": _events(session, row.id),
    }


def _events(session: Session, request_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.entity_type == "promotion_request", AuditEvent.entity_id == str(request_id)
        )
        .order_by(AuditEvent.id)
    )
    return [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "actor": e.actor,
            "action": e.action,
            "details": e.details,
        }
        for e in rows
    ]


def list_promotions(
    session: Session, *, adapter: str | None = None, state: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Promotion requests, newest first."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"invalid limit {limit}: use 1 to {MAX_LIST}")
    query = select(PromotionRequest).order_by(PromotionRequest.id.desc()).limit(limit)
    if adapter:
        query = query.where(PromotionRequest.adapter_id == get_adapter_row(session, adapter).id)
    if state:
        if state not in (*OPEN_STATES, *FINAL_STATES):
            raise InvalidInput(
                f"unknown state {state!r}; use one of {', '.join((*OPEN_STATES, *FINAL_STATES))}"
            )
        query = query.where(PromotionRequest.state == state)
    return [promotion_dict(session, row) for row in session.scalars(query)]


def promotion_dict(session: Session, row: PromotionRequest) -> dict[str, Any]:
    adapter = session.get(Adapter, row.adapter_id)
    version = session.get(AdapterVersion, row.version_id)
    assert adapter is not None and version is not None
    current = (
        session.get(AdapterVersion, row.current_version_id) if row.current_version_id else None
    )
    return {
        "id": row.id,
        "adapter": adapter.name,
        "version": version.version,
        "ref": f"{adapter.name}@{version.version}",
        "alias": row.alias,
        "protected": is_protected(row.alias),
        "state": row.state,
        "final": row.state in FINAL_STATES,
        "datasets": row.datasets,
        "split": row.split,
        "reason": row.reason,
        "requested_by": row.requested_by,
        "current_version": current.version if current is not None else None,
        "claimed_by": row.claimed_by,
        "lease_expires_at": row.lease_expires_at.isoformat() if row.lease_expires_at else None,
        "attempts": row.attempts,
        "decision": row.decision,
        "decided_by": row.decided_by,
        "error": row.error,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }
