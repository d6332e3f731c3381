"""The event outbox and its webhook deliveries, as database operations.

A change that others must hear about (an alias move, a promotion decision)
calls ``enqueue_event`` in its own transaction, so the event exists exactly
when the change commits. A deliverer (``registry.webhook_delivery``) then turns
each event into one delivery per configured URL, claims due deliveries, sends
them and records every attempt here. Any number of deliverers may run against
one database: claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and the write
lock on SQLite, and a claimed delivery is leased so no other deliverer sends it
while the request is in flight.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db.base import utcnow
from registry.db.dialect import insert_ignore
from registry.db.models import OutboxEvent, WebhookAttempt, WebhookDelivery
from registry.errors import InvalidInput, NotFound

log = logging.getLogger(__name__)

MAX_LIST = 500
# Outbox events turned into deliveries per pass.
DISPATCH_BATCH = 100
# Maximum length of the error text kept per attempt, in characters.
MAX_ERROR_CHARS = 1000


def enqueue_event(session: Session, event_type: str, payload: dict[str, Any]) -> None:
    """Add an event to the outbox in the caller's transaction."""
    session.add(OutboxEvent(event_type=event_type, payload=payload))


@dataclass(frozen=True)
class ClaimedDelivery:
    """A delivery this deliverer may send now: the lease keeps others away until it ends."""

    id: int
    event_id: int
    event_type: str
    url: str
    attempt: int
    body: dict[str, Any]


def dispatch_events(session: Session, urls: list[str]) -> int:
    """Create a pending delivery per URL for each undispatched event; return the event count.

    NOTE: events that were written while no URL was configured are delivered to
    the URLs configured when a deliverer first runs, however old they are.
    """
    if not urls:
        return 0
    events = session.scalars(
        select(OutboxEvent)
        .where(OutboxEvent.dispatched.is_(False))
        .order_by(OutboxEvent.id)
        .limit(DISPATCH_BATCH)
        .with_for_update(skip_locked=True)
    ).all()
    now = utcnow()
    for event in events:
        for url in urls:
            insert_ignore(
                session,
                WebhookDelivery.__table__,  # type: ignore[arg-type]
                {
                    "event_id": event.id,
                    "url": url,
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                },
                conflict_columns=["event_id", "url"],
            )
        event.dispatched = True
    session.flush()
    return len(events)


def claim_due_deliveries(
    session: Session, *, limit: int, lease_seconds: float
) -> list[ClaimedDelivery]:
    """Claim pending deliveries whose next attempt is due, counting the attempt now.

    The next attempt time moves ``lease_seconds`` ahead, so a deliverer that dies
    mid-request leaves the delivery to be retried after the lease instead of lost.
    """
    now = utcnow()
    rows = session.execute(
        select(WebhookDelivery, OutboxEvent)
        .join(OutboxEvent, OutboxEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=WebhookDelivery)
    ).all()
    claimed = []
    for delivery, event in rows:
        delivery.attempts += 1
        delivery.next_attempt_at = now + timedelta(seconds=lease_seconds)
        claimed.append(
            ClaimedDelivery(
                id=delivery.id,
                event_id=event.id,
                event_type=event.event_type,
                url=delivery.url,
                attempt=delivery.attempts,
                body=event_body(event),
            )
        )
    session.flush()
    return claimed


def event_body(event: OutboxEvent) -> dict[str, Any]:
    """Return the JSON document a webhook receives for ``event``."""
    return {
        "id": event.id,
        "type": event.event_type,
        "created_at": event.created_at.isoformat(),
        "data": event.payload,
    }


def record_attempt(
    session: Session,
    *,
    delivery_id: int,
    attempt: int,
    status_code: int | None,
    error: str | None,
    duration_ms: float,
    retry_in_seconds: float | None,
) -> str:
    """Log one attempt and return the delivery's new state.

    A 2xx status delivers it. Otherwise it is retried after ``retry_in_seconds``,
    or marked failed when that is None (no attempts left).
    """
    session.add(
        WebhookAttempt(
            delivery_id=delivery_id,
            attempt=attempt,
            status_code=status_code,
            error=error[:MAX_ERROR_CHARS] if error else None,
            duration_ms=duration_ms,
        )
    )
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None:
        raise NotFound(f"webhook delivery {delivery_id} not found")
    delivery.last_status = status_code
    delivery.last_error = error[:MAX_ERROR_CHARS] if error else None
    now = utcnow()
    if status_code is not None and 200 <= status_code < 300:
        delivery.state = "delivered"
        delivery.delivered_at = now
    elif retry_in_seconds is None:
        delivery.state = "failed"
        # The URL stays out of the log: webhook URLs often embed a secret path.
        log.error(
            "webhook delivery %s of event %s failed for good after %d attempts: %s",
            delivery_id,
            delivery.event_id,
            attempt,
            error or f"HTTP {status_code}",
        )
    else:
        delivery.next_attempt_at = now + timedelta(seconds=retry_in_seconds)
    session.flush()
    return delivery.state


def list_events(session: Session, *, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """Outbox events, oldest first."""
    query = (
        select(OutboxEvent)
        .where(OutboxEvent.id > after_id)
        .order_by(OutboxEvent.id)
        .limit(_check_limit(limit))
    )
    return [{**event_body(row), "dispatched": row.dispatched} for row in session.scalars(query)]


def list_deliveries(
    session: Session, *, event_id: int | None = None, state: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Webhook deliveries, newest first."""
    query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(_check_limit(limit))
    if event_id is not None:
        query = query.where(WebhookDelivery.event_id == event_id)
    if state is not None:
        if state not in ("pending", "delivered", "failed"):
            raise InvalidInput(f"unknown delivery state {state!r}; use pending, delivered, failed")
        query = query.where(WebhookDelivery.state == state)
    return [_delivery_dict(row) for row in session.scalars(query)]


def get_delivery(session: Session, delivery_id: int) -> dict[str, Any]:
    """Return one delivery with every attempt, oldest first."""
    row = session.get(WebhookDelivery, delivery_id)
    if row is None:
        raise NotFound(f"webhook delivery {delivery_id} not found")
    attempts = session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery_id)
        .order_by(WebhookAttempt.id)
    )
    return {
        **_delivery_dict(row),
        "attempt_log": [
            {
                "attempt": a.attempt,
                "at": a.at.isoformat(),
                "status_code": a.status_code,
                "error": a.error,
                "duration_ms": a.duration_ms,
            }
            for a in attempts
        ],
    }


def _delivery_dict(row: WebhookDelivery) -> dict[str, Any]:
    return {
        "id": row.id,
        "event_id": row.event_id,
        "url": row.url,
        "state": row.state,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at.isoformat(),
        "last_status": row.last_status,
        "last_error": row.last_error,
        "delivered_at": row.delivered_at.isoformat() if row.delivered_at else None,
        "created_at": row.created_at.isoformat(),
    }


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"invalid limit {limit}: use 1 to {MAX_LIST}")
    return limit
