"""Starting the API: schema check, auth mode, blob store, uvicorn."""

from __future__ import annotations

import logging

import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from registry.api.app import create_app
from registry.api.deps import is_loopback
from registry.config import Settings
from registry.db.migrate import check_schema_current, current_revision, upgrade_database
from registry.db.session import create_db_engine, create_session_factory, session_scope
from registry.errors import InvalidInput
from registry.services.tokens import has_tokens
from registry.storage import open_blob_store

log = logging.getLogger(__name__)


def prepare_database(engine: Engine) -> None:
    """Create the schema in an empty database; refuse one that is behind."""
    if current_revision(engine) is None:
        log.info("empty database: creating the schema")
        upgrade_database(engine)
    check_schema_current(engine)


def decide_open_access(settings: Settings, engine: Engine) -> bool:
    """Return whether requests without a token are served; raise if the setup is unsafe."""
    loopback = is_loopback(settings.host)
    if settings.auth == "open" and not loopback:
        raise InvalidInput(
            f"ADAPTERREG_AUTH=open is only allowed on a loopback address, not {settings.host!r}; "
            "create tokens with `adapterreg token create` and use auth=required"
        )
    if loopback and settings.auth != "required":
        return True
    with session_scope(create_session_factory(engine)) as session:
        if not has_tokens(session):
            raise InvalidInput(
                f"the server would listen on {settings.host!r} without any API token; create "
                "one first with `adapterreg token create --name admin --role admin`"
            )
    return False


def build_app(settings: Settings) -> FastAPI:
    engine = create_db_engine(settings.database_url)
    prepare_database(engine)
    open_access = decide_open_access(settings, engine)
    store = open_blob_store(settings.storage_url)
    log.info(
        "registry ready: database %s, storage %s, %s access",
        engine.url.render_as_string(hide_password=True),
        settings.storage_url,
        "open (loopback)" if open_access else "token",
    )
    return create_app(settings, engine=engine, store=store, open_access=open_access)


def serve(settings: Settings) -> None:
    """Run the API with uvicorn until interrupted."""
    app = build_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)
