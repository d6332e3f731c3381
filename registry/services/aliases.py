"""Aliases (``production``, ``staging``, any name) and their append-only history."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db.base import utcnow
from registry.db.dialect import insert_ignore
from registry.db.models import Adapter, AdapterVersion, Alias, AliasMove
from registry.errors import Conflict, Forbidden, NotFound
from registry.services.actors import Actor
from registry.services.audit import record_event
from registry.services.evaluations import evaluation_summaries
from registry.services.names import check_alias
from registry.services.versions import get_adapter_row, get_version_row
from registry.services.webhooks import enqueue_event

log = logging.getLogger(__name__)

# Aliases that move only through an approved promotion (or a rollback by an approver).
PROTECTED_ALIASES = frozenset({"production"})


def is_protected(alias: str) -> bool:
    return alias in PROTECTED_ALIASES


def set_alias(
    session: Session, actor: Actor, *, ref: str, alias: str, reason: str | None = None
) -> dict[str, Any]:
    """Point an unprotected alias at a version directly (protected ones need `promote`)."""
    actor.require("writer")
    check_alias(alias)
    if is_protected(alias):
        raise Forbidden(
            f"alias {alias!r} is protected; move it with `adapterreg promote {ref} --to {alias}`"
        )
    version = get_version_row(session, ref)
    return move_alias(session, actor, version=version, alias=alias, reason=reason)


def move_alias(
    session: Session,
    actor: Actor,
    *,
    version: AdapterVersion,
    alias: str,
    reason: str | None,
    evidence: dict[str, Any] | None = None,
    promotion_request_id: int | None = None,
) -> dict[str, Any]:
    """Move ``alias`` to ``version`` and append the history row, in the caller's transaction.

    The alias row is locked first, so concurrent moves of one alias serialize and
    every move records the version it really replaced.
    """
    adapter = session.get(Adapter, version.adapter_id)
    assert adapter is not None
    row, created = _lock_alias(session, adapter_id=adapter.id, alias=alias, version_id=version.id)
    from_version_id = None if created else row.version_id
    if from_version_id == version.id:
        return alias_dict(session, row, adapter.name, moved=False)
    row.version_id = version.id
    row.updated_at = utcnow()
    move = AliasMove(
        adapter_id=adapter.id,
        alias=alias,
        from_version_id=from_version_id,
        to_version_id=version.id,
        actor=actor.name,
        reason=reason,
        evidence=evidence or {},
        promotion_request_id=promotion_request_id,
    )
    session.add(move)
    session.flush()
    record_event(
        session,
        actor,
        "alias.moved",
        entity_type="alias",
        entity_id=f"{adapter.name}@{alias}",
        details={
            "from_version": _number(session, from_version_id),
            "to_version": version.version,
            "reason": reason,
            "move_id": move.id,
        },
    )
    enqueue_event(
        session,
        "alias.moved",
        {
            "adapter": adapter.name,
            "alias": alias,
            "from_version": _number(session, from_version_id),
            "to_version": version.version,
            "actor": actor.name,
            "reason": reason,
            "move_id": move.id,
            "promotion_request_id": promotion_request_id,
            "evidence": evidence or {},
        },
    )
    return alias_dict(session, row, adapter.name, moved=True)


def _lock_alias(
    session: Session, *, adapter_id: int, alias: str, version_id: int
) -> tuple[Alias, bool]:
    """Create the alias if needed and lock its row; return it and whether it was created."""
    created = insert_ignore(
        session,
        Alias.__table__,  # type: ignore[arg-type]
        {
            "adapter_id": adapter_id,
            "name": alias,
            "version_id": version_id,
            "protected": is_protected(alias),
            "updated_at": utcnow(),
        },
        conflict_columns=["adapter_id", "name"],
    )
    row = session.scalars(
        select(Alias)
        .where(Alias.adapter_id == adapter_id, Alias.name == alias)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    return row, created


def _number(session: Session, version_id: int | None) -> int | None:
    if version_id is None:
        return None
    return session.scalar(select(AdapterVersion.version).where(AdapterVersion.id == version_id))


def alias_dict(session: Session, row: Alias, adapter_name: str, *, moved: bool) -> dict[str, Any]:
    return {
        "name": adapter_name,
        "alias": row.name,
        "version": _number(session, row.version_id),
        "protected": row.protected,
        "moved": moved,
        "updated_at": row.updated_at.isoformat(),
    }


def list_history(session: Session, name: str, *, alias: str | None = None) -> list[dict[str, Any]]:
    """List every move of the adapter's aliases (or one alias), oldest first, with evaluations."""
    adapter = get_adapter_row(session, name)
    query = select(AliasMove).where(AliasMove.adapter_id == adapter.id).order_by(AliasMove.id)
    if alias:
        query = query.where(AliasMove.alias == check_alias(alias))
    return [
        {
            "id": move.id,
            "alias": move.alias,
            "from_version": _number(session, move.from_version_id),
            "to_version": _number(session, move.to_version_id),
            "actor": move.actor,
            "reason": move.reason,
            "evidence": move.evidence,
            "evaluations": evaluation_summaries(session, move.evidence.get("evaluation_ids") or []),
            "promotion_request_id": move.promotion_request_id,
            "at": move.created_at.isoformat(),
        }
        for move in session.scalars(query)
    ]


def rollback_alias(
    session: Session, actor: Actor, *, name: str, alias: str, reason: str
) -> dict[str, Any]:
    """Move ``alias`` back to the version it pointed at before its latest forward move.

    Rollbacks undo moves one at a time: a second rollback goes one step further back.
    """
    check_alias(alias)
    actor.require("approver" if is_protected(alias) else "writer")
    if not reason or not reason.strip():
        raise Conflict("a rollback needs a reason; pass --reason TEXT")
    adapter = get_adapter_row(session, name)
    moves = session.scalars(
        select(AliasMove)
        .where(AliasMove.adapter_id == adapter.id, AliasMove.alias == alias)
        .order_by(AliasMove.id)
    ).all()
    if not moves:
        raise NotFound(f"adapter {name!r} has no alias {alias!r} to roll back")
    target_id = _rollback_target(moves)
    if target_id is None:
        raise Conflict(
            f"alias {name}@{alias} has no earlier version to roll back to "
            f"(history has {len(moves)} move(s))"
        )
    target = session.get(AdapterVersion, target_id)
    assert target is not None
    return move_alias(
        session,
        actor,
        version=target,
        alias=alias,
        reason=reason,
        evidence={"kind": "rollback", "rolled_back_move": moves[-1].id},
    )


def _rollback_target(moves: Sequence[AliasMove]) -> int | None:
    """Replay the history as a stack: forward moves push, rollbacks pop."""
    stack: list[int] = []
    for move in moves:
        if move.evidence.get("kind") == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(move.to_version_id)
    return stack[-2] if len(stack) >= 2 else None


def get_alias_version_id(session: Session, adapter_id: int, alias: str) -> int | None:
    row = session.scalar(select(Alias).where(Alias.adapter_id == adapter_id, Alias.name == alias))
    return row.version_id if row is not None else None
