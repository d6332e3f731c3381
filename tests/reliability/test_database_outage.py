"""Database outage: the API returns 503 while PostgreSQL is down and recovers without a restart.

The test starts its own PostgreSQL cluster (initdb and pg_ctl as the
``postgres`` user, on a free loopback port) so that stopping it never touches
the machine's shared server. pytest's ``tmp_path`` is private to root (mode
0700), so the data directory lives in its own temporary directory that the
``postgres`` user owns, removed afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from registry import errors
from registry.api.app import create_app
from registry.client import RegistryClient
from registry.config import Settings
from registry.db.migrate import upgrade_database
from registry.db.models import AdapterVersion, Blob, VersionFile
from registry.db.session import create_db_engine
from registry.storage import LocalBlobStore
from tests.reliability.conftest import make_variants
from tests.support.fixtures import MiB
from tests.support.servers import free_port, run_app

POSTGRES_USER = "postgres"


def postgres_bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def as_postgres(*command: str) -> list[str]:
    if os.geteuid() != 0:
        return list(command)
    return ["runuser", "-u", POSTGRES_USER, "--", *command]


@dataclass
class PrivateCluster:
    bin_dir: Path
    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{POSTGRES_USER}@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        subprocess.run(
            as_postgres(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        # Socket in the data directory, TCP on loopback only.
        options = f"-p {self.port} -k {self.data_dir} -h 127.0.0.1 -c fsync=off"
        self.pg_ctl("-w", "-o", options, "-l", str(self.data_dir / "server.log"), "start")

    def stop(self) -> None:
        self.pg_ctl("-w", "-m", "immediate", "stop")


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(POSTGRES_USER)
        except KeyError:
            pytest.skip("initdb refuses to run as root and no 'postgres' user exists")
    root = Path(tempfile.mkdtemp(prefix="adapterreg-pg-"))
    data_dir = root / "data"
    if os.geteuid() == 0:
        os.chown(root, user.pw_uid, user.pw_gid)
    subprocess.run(
        as_postgres(str(bin_dir / "initdb"), "-D", str(data_dir), "-A", "trust", "-U", "postgres"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = PrivateCluster(bin_dir, data_dir, free_port())
    server.start()
    try:
        yield server
    finally:
        subprocess.run(
            as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "stop"),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class OutageRegistry:
    url: str
    engine: Engine
    store: LocalBlobStore


@pytest.fixture
def outage_registry(cluster: PrivateCluster, tmp_path: Path) -> Iterator[OutageRegistry]:
    # A short pool timeout, so that requests waiting for a connection fail fast too.
    engine = create_db_engine(cluster.url, pool_timeout=5)
    upgrade_database(engine)
    store = LocalBlobStore(tmp_path / "blobs")
    settings = Settings(
        home=tmp_path / "home", database_url=cluster.url, storage_url="(test)", part_size=5 * MiB
    )
    app = create_app(settings, engine=engine, store=store, open_access=True)
    with run_app(app) as server:
        yield OutageRegistry(server.url, engine, store)
    engine.dispose()


def push(registry: OutageRegistry, directory: Path, state: Path) -> dict[str, Any]:
    with RegistryClient(registry.url, state_dir=state) as client:
        return client.push("steady", directory, base_model="tiny")


def test_database_outage_gives_503_and_recovers(
    cluster: PrivateCluster,
    outage_registry: OutageRegistry,
    tiny_base: Path,
    tiny_lora: Path,
    tmp_path: Path,
) -> None:
    api = f"{outage_registry.url}/api/v1"
    client = RegistryClient(outage_registry.url, state_dir=tmp_path / "state")
    client.register_base_model("tiny", tiny_base)
    variants = make_variants(tiny_lora, tmp_path / "variants", 12)
    for directory in variants[:3]:
        client.push("steady", directory, base_model="tiny")

    # Pushes keep running in a thread while the database goes away.
    outcomes: list[str] = []
    stop_pushing = threading.Event()

    def keep_pushing() -> None:
        for directory in variants[3:]:
            if stop_pushing.is_set():
                return
            try:
                push(outage_registry, directory, tmp_path / "state")
                outcomes.append("ok")
            except errors.ServiceUnavailable as error:
                outcomes.append(error.detail)

    pusher = threading.Thread(target=keep_pushing, daemon=True)
    pusher.start()
    cluster.stop()
    down = [
        httpx.get(f"{api}/adapters/steady/versions", timeout=30),
        httpx.get(f"{api}/health", timeout=30),
        httpx.post(f"{api}/blobs/missing", json={"digests": []}, timeout=30),
    ]
    pusher.join(timeout=120)
    stop_pushing.set()

    for response in down:
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["error"] == "ServiceUnavailable"
        assert "database" in body["detail"]
        assert "retry" in body["detail"]
    assert any(outcome != "ok" for outcome in outcomes), outcomes

    cluster.start()
    recovered = httpx.get(f"{api}/adapters/steady/versions", timeout=30)
    assert recovered.status_code == 200, recovered.text
    after = client.push("steady", variants[-1], base_model="tiny")
    assert after["created"] in (True, False)
    assert_no_partial_writes(outage_registry)


def assert_no_partial_writes(registry: OutageRegistry) -> None:
    """Every version has its two files, numbered 1..n, each file's blob intact."""
    with registry.engine.connect() as connection:
        numbers = sorted(connection.scalars(select(AdapterVersion.version)))
        file_counts = connection.execute(
            select(VersionFile.version_id, func.count()).group_by(VersionFile.version_id)
        ).all()
        digests = set(connection.scalars(select(VersionFile.digest)))
        recorded = set(connection.scalars(select(Blob.digest)))
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(file_counts) == len(numbers)
    assert {count for _, count in file_counts} == {2}
    assert digests <= recorded
    for digest in digests:
        assert registry.store.has_blob(digest)
