"""Fixtures shared by the registry tests: databases, stores, a live API."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from registry.api.app import create_app
from registry.client import RegistryClient
from registry.config import Settings
from registry.db.migrate import upgrade_database
from registry.db.session import create_db_engine, create_session_factory, session_scope
from registry.storage import LocalBlobStore, S3BlobStore
from registry.storage.base import BlobStore
from tests.support.databases import private_postgres_database, truncate_all
from tests.support.servers import run_app

BACKENDS = ["sqlite", "postgres"]
MiB = 1024 * 1024


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head once; tests copy it instead of migrating."""
    path = tmp_path_factory.mktemp("sqlite-template") / "registry.db"
    engine = create_db_engine(f"sqlite:///{path}")
    upgrade_database(engine)
    # Closing the last connection checkpoints the WAL into the main file, so a copy is whole.
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A private PostgreSQL database for this test run, migrated to head."""
    with private_postgres_database() as url:
        engine = create_db_engine(url)
        upgrade_database(engine)
        engine.dispose()
        yield url


@pytest.fixture(scope="session")
def postgres_engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_db_engine(postgres_url, pool_size=40, max_overflow=10)
    yield engine
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        path = tmp_path / "registry.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def engine(backend: str, db_url: str, request: pytest.FixtureRequest) -> Iterator[Engine]:
    if backend == "postgres":
        shared: Engine = request.getfixturevalue("postgres_engine")
        truncate_all(shared)
        yield shared
        return
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session in a transaction that the test's changes commit through."""
    with session_scope(create_session_factory(engine)) as session:
        yield session


@pytest.fixture
def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> BlobStore:
    """The local store beside SQLite; an S3 bucket on the loopback moto server beside PostgreSQL."""
    if backend == "sqlite":
        return LocalBlobStore(tmp_path / "blobs")
    endpoint: str = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return S3BlobStore(client, bucket, prefix="registry")


@dataclass
class LiveRegistry:
    url: str
    client: RegistryClient
    engine: Engine
    store: BlobStore
    settings: Settings
    backend: str
    app: FastAPI

    def client_for(self, token: str | None) -> RegistryClient:
        return RegistryClient(self.url, token, state_dir=self.settings.home / "uploads")


@pytest.fixture
def registry_settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        home=tmp_path / "home", database_url=db_url, storage_url="(test store)", part_size=5 * MiB
    )


@pytest.fixture
def live_registry(
    backend: str, engine: Engine, store: BlobStore, registry_settings: Settings
) -> Iterator[LiveRegistry]:
    """The API over real HTTP on a free loopback port, open for the local user."""
    app = create_app(registry_settings, engine=engine, store=store, open_access=True)
    with run_app(app) as server:
        settings = registry_settings
        client = RegistryClient(server.url, state_dir=settings.home / "uploads")
        yield LiveRegistry(
            url=server.url,
            client=client,
            engine=engine,
            store=store,
            settings=settings,
            backend=backend,
            app=app,
        )
        client.close()
