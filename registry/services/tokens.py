"""API tokens: created once, stored as a sha256 hash, checked on every request."""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db.base import utcnow
from registry.db.models import ApiToken
from registry.errors import Conflict, NotFound, Unauthorized
from registry.services.actors import Actor, check_role
from registry.services.audit import record_event
from registry.services.names import check_name

TOKEN_PREFIX = "arg_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, actor: Actor, *, name: str, role: str) -> dict[str, Any]:
    """Create a token for user ``name``; the returned ``token`` is shown only this once."""
    actor.require("admin")
    check_name(name, what="token name")
    check_role(role)
    existing = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if existing is not None and existing.revoked_at is not None:
        raise Conflict(
            f"token name {name!r} belongs to a token revoked at "
            f"{existing.revoked_at.isoformat()}; names of revoked tokens are not reused, "
            "so pick a new name"
        )
    if existing is not None:
        raise Conflict(
            f"a token named {name!r} already exists; pick another name (revoking it does not "
            "free the name)"
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(name=name, token_hash=hash_token(token), role=role)
    session.add(row)
    session.flush()
    record_event(
        session, actor, "token.created", entity_type="token", entity_id=name, details={"role": role}
    )
    return {"name": name, "role": role, "token": token, "created_at": row.created_at.isoformat()}


def revoke_token(session: Session, actor: Actor, *, name: str) -> dict[str, Any]:
    actor.require("admin")
    row = session.scalar(select(ApiToken).where(ApiToken.name == name))
    if row is None:
        raise NotFound(f"token {name!r} not found")
    row.revoked_at = utcnow()
    record_event(session, actor, "token.revoked", entity_type="token", entity_id=name)
    return {"name": name, "revoked": True}


def list_tokens(session: Session, actor: Actor) -> list[dict[str, Any]]:
    actor.require("admin")
    return [
        {
            "name": row.name,
            "role": row.role,
            "created_at": row.created_at.isoformat(),
            "revoked": row.revoked_at is not None,
        }
        for row in session.scalars(select(ApiToken).order_by(ApiToken.name))
    ]


def has_tokens(session: Session) -> bool:
    return (
        session.scalar(select(ApiToken.id).where(ApiToken.revoked_at.is_(None)).limit(1))
        is not None
    )


def authenticate(session: Session, token: str) -> Actor:
    """Return the actor a bearer token belongs to; Unauthorized if unknown or revoked."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    if row is None or row.revoked_at is not None:
        raise Unauthorized("invalid or revoked API token; set ADAPTERREG_TOKEN to a valid token")
    return Actor(name=row.name, role=row.role)
