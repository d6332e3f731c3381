"""Statements whose SQL differs between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignore(
    session: Session, table: Table, values: dict[str, Any], *, conflict_columns: list[str]
) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; return True if a row was inserted."""
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    # The RETURNING row shows whether the row was inserted, on both databases. rowcount
    # cannot: psycopg reports -1 when SQLAlchemy adds RETURNING of the primary key.
    statement = (
        module.insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=conflict_columns)
        .returning(*table.primary_key.columns)
    )
    return session.execute(statement).first() is not None


# First key of the registry's two-key advisory locks on PostgreSQL ("arg1" in ASCII).
BLOB_LOCK_NAMESPACE = 0x61726731


def lock_blob_digest(session: Session, digest: str) -> None:
    """Serialize work on one blob digest until the caller's transaction ends.

    PostgreSQL takes a transaction-level advisory lock keyed on the digest, so it
    also covers a digest that has no ``blobs`` row. SQLite needs nothing: every
    transaction holds the database write lock from BEGIN IMMEDIATE.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    key = int.from_bytes(bytes.fromhex(digest.removeprefix("sha256:")[:8]), "big", signed=True)
    session.execute(
        text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
        {"namespace": BLOB_LOCK_NAMESPACE, "key": key},
    )
