"""Adapters, versions, lineage, aliases and resolve."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request

from registry.api.deps import ActorDep, SessionDep, StateDep, StoreDep
from registry.api.errors import error_responses
from registry.api.routing import RegistryRoute
from registry.api.schemas import AliasIn, RollbackIn, VersionIn
from registry.services import aliases, listing, resolve, versions
from registry.services.commit import commit_version

router = APIRouter(tags=["adapters"], route_class=RegistryRoute)

Limit = Annotated[int, Query(ge=1, le=listing.MAX_PAGE_SIZE)]


@router.get("/adapters", responses=error_responses(401, 422))
def list_adapters(
    session: SessionDep,
    actor: ActorDep,
    base_model: str | None = None,
    method: str | None = None,
    tag: Annotated[str | None, Query(description="KEY=VALUE")] = None,
    cursor: str | None = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    actor.require("reader")
    return listing.list_adapters(
        session, base_model=base_model, method=method, tag=tag, cursor=cursor, limit=limit
    )


@router.post(
    "/adapters/{name}/versions",
    status_code=201,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
def push_version(
    name: str,
    body: VersionIn,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    state: StateDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Commit a version whose blobs are uploaded; identical content returns the old version."""
    return commit_version(
        session,
        store,
        actor,
        name=name,
        spec=body.model_dump(),
        max_header_bytes=state.settings.max_header_bytes,
        idempotency_key=idempotency_key,
    )


@router.get("/adapters/{name}/versions", responses=error_responses(401, 404, 422))
def list_versions(
    name: str,
    session: SessionDep,
    actor: ActorDep,
    method: str | None = None,
    tag: Annotated[str | None, Query(description="KEY=VALUE")] = None,
    cursor: str | None = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    actor.require("reader")
    return listing.list_versions(session, name, method=method, tag=tag, cursor=cursor, limit=limit)


@router.get("/adapters/{name}/versions/{ref}", responses=error_responses(401, 404, 422))
def get_version(name: str, ref: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Show one version; `ref` is a version number or an alias."""
    actor.require("reader")
    return versions.get_version(session, f"{name}@{ref}")


@router.get("/adapters/{name}/versions/{ref}/lineage", responses=error_responses(401, 404, 422))
def get_lineage(name: str, ref: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    actor.require("reader")
    return versions.get_lineage(session, f"{name}@{ref}")


@router.get("/adapters/{name}/aliases/history", responses=error_responses(401, 404, 422))
def alias_history(
    name: str, session: SessionDep, actor: ActorDep, alias: str | None = None
) -> dict[str, Any]:
    actor.require("reader")
    return {"items": aliases.list_history(session, name, alias=alias)}


@router.put("/adapters/{name}/aliases/{alias}", responses=error_responses(401, 403, 404, 422))
def set_alias(
    name: str, alias: str, body: AliasIn, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    """Point an unprotected alias at a version; protected aliases move through promotions."""
    return aliases.set_alias(
        session, actor, ref=f"{name}@{body.version}", alias=alias, reason=body.reason
    )


@router.post(
    "/adapters/{name}/aliases/{alias}/rollback", responses=error_responses(401, 403, 404, 409, 422)
)
def rollback_alias(
    name: str, alias: str, body: RollbackIn, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    """Move the alias back to the version it pointed at before its latest move."""
    return aliases.rollback_alias(session, actor, name=name, alias=alias, reason=body.reason)


@router.get("/resolve/{ref}", responses=error_responses(401, 404, 422))
def resolve_reference(
    ref: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    actor: ActorDep,
    state: StateDep,
) -> dict[str, Any]:
    """Resolve `name`, `name@3` or `name@alias` for a serving system."""
    actor.require("reader")
    return resolve.resolve_reference(
        session,
        store,
        ref,
        api_base_url=state.settings.public_url or str(request.base_url).rstrip("/"),
        presign_ttl=state.settings.presign_ttl,
    )
