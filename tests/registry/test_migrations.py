"""The Alembic history matches the models and can be walked down and up."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from registry.db.base import Base
from registry.db.migrate import (
    check_schema_current,
    current_revision,
    downgrade_database,
    head_revision,
    upgrade_database,
)
from registry.errors import ServiceUnavailable


def test_upgrade_head_matches_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_downgrade_base_and_upgrade_again(engine: Engine) -> None:
    downgrade_database(engine, "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    upgrade_database(engine)
    assert current_revision(engine) == head_revision()


def test_schema_check_rejects_behind_database(engine: Engine) -> None:
    downgrade_database(engine, "base")
    try:
        try:
            check_schema_current(engine)
        except ServiceUnavailable as error:
            assert "adapterreg db upgrade" in error.detail
        else:
            raise AssertionError("a database behind head must be rejected")
    finally:
        upgrade_database(engine)
