"""Alembic environment: runs migrations on the connection or URL it is given.

Callers pass either ``config.attributes["connection"]`` (tests, the server's
startup check) or the ``sqlalchemy.url`` option (``adapterreg db upgrade``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from registry.db.session import create_db_engine

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        # SQLite cannot ALTER most things in place; batch mode copies the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # Only set when generating a revision; migrations never import live models.
        target_metadata=config.attributes.get("target_metadata"),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_db_engine(config.get_main_option("sqlalchemy.url") or "")
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline SQL generation is not supported; run `adapterreg db upgrade`")
run_migrations_online()
