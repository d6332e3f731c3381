"""Alembic environment and schema versions of the registry database."""
