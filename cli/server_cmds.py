"""Commands that run on the server side: serve, db, token."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from cli.errors import handle_errors, json_option
from cli.output import print_json, print_table
from registry.config import Settings
from registry.db.migrate import (
    check_revision_known,
    check_schema_current,
    current_revision,
    head_revision,
    upgrade_database,
)
from registry.db.session import create_db_engine, create_session_factory, session_scope
from registry.errors import ServiceUnavailable
from registry.services import tokens
from registry.services.actors import LOCAL_ADMIN


@click.command()
@click.option("--host", help="Address to bind (ADAPTERREG_HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port to bind (ADAPTERREG_PORT, default 8765).")
@handle_errors
def serve(host: str | None, port: int | None) -> None:
    """Run the registry API (SQLite + ./.adapterreg unless ADAPTERREG_* variables set others)."""
    from registry.server import serve as run_server

    settings = Settings.from_env()
    settings = replace(settings, host=host or settings.host, port=port or settings.port)
    run_server(settings)


@click.group()
def db() -> None:
    """Manage the registry database schema."""


@db.command("upgrade")
@json_option
@handle_errors
def db_upgrade(as_json: bool) -> None:
    """Migrate the database in ADAPTERREG_DATABASE_URL to the newest schema."""
    engine = create_db_engine(Settings.from_env().database_url)
    before = current_revision(engine)
    check_revision_known(before)
    upgrade_database(engine)
    result = {"from": before, "to": current_revision(engine)}
    if as_json:
        print_json(result)
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {result['to']}")


@db.command("current")
@json_option
@handle_errors
def db_current(as_json: bool) -> None:
    """Show the database's schema revision and the newest one."""
    url = Settings.from_env().database_url
    # A SQLite file that does not exist yet is an empty database: do not create it here.
    current = None if _missing_sqlite_file(url) else current_revision(create_db_engine(url))
    result = {"current": current, "head": head_revision()}
    if as_json:
        print_json(result)
    else:
        click.echo(f"current {result['current'] or 'empty'}, newest {result['head']}")


@click.group()
def token() -> None:
    """Create, list and revoke API tokens (runs against the database directly)."""


def _server_session() -> AbstractContextManager[Session]:
    """Open a session on a database whose schema is current, without creating a SQLite file."""
    url = Settings.from_env().database_url
    missing = _missing_sqlite_file(url)
    if missing is not None:
        raise ServiceUnavailable(
            f"database file {missing!r} does not exist; create it with `adapterreg db upgrade` "
            "or set ADAPTERREG_DATABASE_URL to the registry's database"
        )
    engine = create_db_engine(url)
    check_schema_current(engine)
    return session_scope(create_session_factory(engine))


def _missing_sqlite_file(url: str) -> str | None:
    """Return the path of a SQLite database file that does not exist, else None."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # create_db_engine reports the invalid URL
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return None if Path(parsed.database).exists() else parsed.database


@token.command("create")
@click.option("--name", required=True, help="User the token belongs to.")
@click.option("--role", required=True, type=click.Choice(["reader", "writer", "approver", "admin"]))
@json_option
@handle_errors
def token_create(name: str, role: str, as_json: bool) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    with _server_session() as session:
        result = tokens.create_token(session, LOCAL_ADMIN, name=name, role=role)
    if as_json:
        print_json(result)
    else:
        click.echo(result["token"])
        click.echo(f"token for {name!r} with role {role!r}; it is not shown again", err=True)


@token.command("list")
@json_option
@handle_errors
def token_list(as_json: bool) -> None:
    with _server_session() as session:
        items = tokens.list_tokens(session, LOCAL_ADMIN)
    if as_json:
        print_json({"items": items})
    else:
        print_table(items, ["name", "role", "revoked", "created_at"])


@token.command("revoke")
@click.argument("name")
@json_option
@handle_errors
def token_revoke(name: str, as_json: bool) -> None:
    with _server_session() as session:
        result = tokens.revoke_token(session, LOCAL_ADMIN, name=name)
    if as_json:
        print_json(result)
    else:
        click.echo(f"token {name!r} revoked")


COMMANDS = [serve, db, token]
