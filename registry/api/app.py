"""The FastAPI application factory."""

from __future__ import annotations

import logging

from fastapi import FastAPI
from sqlalchemy.engine import Engine

from registry import __version__
from registry.api.deps import AppState
from registry.api.errors import install_error_handlers
from registry.api.routes import adapters, admin, blobs, catalog, lifecycle
from registry.config import Settings
from registry.db.session import create_session_factory
from registry.storage.base import BlobStore

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def create_app(
    settings: Settings, *, engine: Engine, store: BlobStore, open_access: bool
) -> FastAPI:
    """Build the API over an engine whose schema is current and a blob store."""
    app = FastAPI(
        title="adapterreg",
        version=__version__,
        description="Registry and lifecycle service for PEFT adapters.",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.registry = AppState(
        settings=settings,
        engine=engine,
        sessions=create_session_factory(engine),
        store=store,
        open_access=open_access,
    )
    install_error_handlers(app)
    for module in (admin, blobs, catalog, adapters, lifecycle):
        app.include_router(module.router, prefix=API_PREFIX)
    return app
