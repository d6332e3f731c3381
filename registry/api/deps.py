"""Request-scoped dependencies: the session boundary, the store and the caller."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from registry.config import Settings
from registry.db.session import session_scope
from registry.errors import Unauthorized
from registry.services.actors import LOCAL_ADMIN, Actor
from registry.services.tokens import authenticate, has_tokens
from registry.services.uow import UnitOfWork
from registry.storage.base import BlobStore


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore
    # True when requests without a token may act as the single local user.
    open_access: bool

    def unit_of_work(self) -> AbstractContextManager[Session]:
        return session_scope(self.sessions)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.registry
    return state


def get_session(request: Request) -> Iterator[Session]:
    """Open the request's unit of work: commit before the response is sent, or roll back."""
    with get_state(request).unit_of_work() as session:
        yield session


def get_uow(request: Request) -> UnitOfWork:
    return get_state(request).unit_of_work


def get_store(request: Request) -> BlobStore:
    return get_state(request).store


def get_actor(request: Request) -> Actor:
    """Authenticate the bearer token; without one, act as the local user on an open server."""
    state = get_state(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    with state.unit_of_work() as session:
        if header:
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("malformed Authorization header; send 'Bearer <token>'")
            return authenticate(session, token.strip())
        if state.open_access and not has_tokens(session):
            return LOCAL_ADMIN
    raise Unauthorized(
        "this registry requires an API token; set ADAPTERREG_TOKEN "
        "(an admin creates one with `adapterreg token create`)"
    )


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
UowDep = Annotated[UnitOfWork, Depends(get_uow)]
StoreDep = Annotated[BlobStore, Depends(get_store)]
ActorDep = Annotated[Actor, Depends(get_actor)]
StateDep = Annotated[AppState, Depends(get_state)]
