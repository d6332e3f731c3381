"""Health, tokens and the audit log."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import text

from registry import __version__
from registry.api.deps import ActorDep, SessionDep
from registry.api.errors import error_responses
from registry.api.routing import RegistryRoute
from registry.api.schemas import TokenIn
from registry.services import audit, tokens

router = APIRouter(route_class=RegistryRoute)


@router.get("/health", tags=["system"], responses=error_responses(503))
def health(session: SessionDep) -> dict[str, Any]:
    """Return ok when the database responds."""
    session.execute(text("SELECT 1"))
    return {"status": "ok", "version": __version__}


@router.post(
    "/tokens", status_code=201, tags=["tokens"], responses=error_responses(401, 403, 409, 422)
)
def create_token(body: TokenIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Create an API token; the response contains the token, shown only once."""
    return tokens.create_token(session, actor, name=body.name, role=body.role)


@router.get("/tokens", tags=["tokens"], responses=error_responses(401, 403))
def list_tokens(session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    return {"items": tokens.list_tokens(session, actor)}


@router.delete("/tokens/{name}", tags=["tokens"], responses=error_responses(401, 403, 404))
def revoke_token(name: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    return tokens.revoke_token(session, actor, name=name)


@router.get("/audit", tags=["audit"], responses=error_responses(401, 403, 422))
def list_audit_events(
    session: SessionDep,
    actor: ActorDep,
    after_id: int = 0,
    limit: int = 100,
    action: str | None = None,
) -> dict[str, Any]:
    actor.require("reader")
    return {
        "items": audit.list_events(
            session, after_id=after_id, limit=min(limit, 1000), action=action
        )
    }
