"""The append-only audit log."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db.models import AuditEvent
from registry.errors import InvalidInput
from registry.services.actors import Actor

log = logging.getLogger(__name__)


def record_event(
    session: Session,
    actor: Actor,
    action: str,
    *,
    entity_type: str,
    entity_id: str,
    details: dict[str, Any] | None = None,
) -> None:
    """Append an audit event in the caller's transaction, so it commits with the change."""
    session.add(
        AuditEvent(
            actor=actor.name,
            action=action,
            entity_type=entity_type,
            entity_id=entity_id,
            details=details or {},
        )
    )
    log.info("%s by %s on %s %s", action, actor.name, entity_type, entity_id)


def list_events(
    session: Session, *, after_id: int = 0, limit: int = 100, action: str | None = None
) -> list[dict[str, Any]]:
    """Return up to ``limit`` events with ids above ``after_id``, oldest first."""
    if limit < 1:
        raise InvalidInput(f"invalid limit {limit}: list at least 1 event (a positive number)")
    if after_id < 0:
        raise InvalidInput(f"invalid after_id {after_id}: event ids start at 1; use 0 or more")
    query = select(AuditEvent).where(AuditEvent.id > after_id).order_by(AuditEvent.id)
    if action:
        query = query.where(AuditEvent.action == action)
    rows = session.scalars(query.limit(limit)).all()
    return [_event_dict(row) for row in rows]


def _event_dict(row: AuditEvent) -> dict[str, Any]:
    at: datetime = row.at
    return {
        "id": row.id,
        "at": at.isoformat(),
        "actor": row.actor,
        "action": row.action,
        "entity_type": row.entity_type,
        "entity_id": row.entity_id,
        "details": row.details,
    }
