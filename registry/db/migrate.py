"""Schema migrations through Alembic, the only way the schema changes."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from registry.errors import ServiceUnavailable

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if engine is not None:
        config.set_main_option(
            "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, f"no migrations found under {MIGRATIONS_DIR}"
    return head


def current_revision(engine: Engine) -> str | None:
    """Return the schema revision (None when empty); raise ServiceUnavailable if unreachable."""
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except OperationalError as e:
        reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        raise ServiceUnavailable(
            f"cannot open the database {engine.url.render_as_string(hide_password=True)}: "
            f"{reason}; check ADAPTERREG_DATABASE_URL, that the database server is up and that "
            "the database exists (create it with `createdb NAME` on PostgreSQL)"
        ) from e


def _known_revisions() -> set[str]:
    scripts = ScriptDirectory.from_config(alembic_config())
    return {script.revision for script in scripts.walk_revisions()}


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: the newest)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    log.info("database %s upgraded to %s", engine.url.render_as_string(), revision)


def downgrade_database(engine: Engine, revision: str) -> None:
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def check_revision_known(current: str | None) -> None:
    """Raise ServiceUnavailable if a newer adapterreg migrated the database to ``current``."""
    if current is not None and current not in _known_revisions():
        raise ServiceUnavailable(
            f"database schema is at revision {current}, which this adapterreg (newest "
            f"revision {head_revision()}) does not know: a newer adapterreg migrated the "
            "database; upgrade adapterreg to that version"
        )


def check_schema_current(engine: Engine) -> None:
    """Raise ServiceUnavailable unless the database is at the newest revision."""
    current = current_revision(engine)
    head = head_revision()
    check_revision_known(current)
    if current != head:
        raise ServiceUnavailable(
            f"database schema is at revision {current or 'none (empty database)'!s}, "
            f"this adapterreg needs {head}; run `adapterreg db upgrade` first"
        )
