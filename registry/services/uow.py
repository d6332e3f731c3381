"""The unit-of-work factory handed to services that stream bytes.

A service that moves megabytes must not hold a transaction open meanwhile (on
SQLite that would hold the database's write lock for the whole transfer), so it
takes a ``UnitOfWork`` and opens short transactions around the transfer. The
factory is built at the boundary (API app, CLI), which still owns commit and
rollback.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy.orm import Session

UnitOfWork = Callable[[], AbstractContextManager[Session]]
