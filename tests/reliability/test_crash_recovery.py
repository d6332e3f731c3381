"""Crash safety: `adapterreg serve` killed with SIGKILL at random points during 100 pushes.

The server runs as a subprocess on PostgreSQL and a local blob store. A killer
thread sends SIGKILL at random moments and starts the server again on the same
port, while the test pushes 100 distinct adapters, retrying each push until it
succeeds. Afterwards every committed version must have all its blobs with the
right digests, no half-registered version may be visible, and `adapterreg gc`
must remove the orphans older than the grace period but keep what an upload in
flight needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from registry import errors
from registry.client import RegistryClient, adapter_file_entries
from registry.db.models import AdapterVersion, Blob, UploadSession, VersionFile
from registry.db.session import create_session_factory, session_scope
from registry.services.actors import LOCAL_ADMIN
from registry.services.fsck import check_integrity
from registry.services.uow import UnitOfWork
from registry.storage import LocalBlobStore
from tests.reliability.conftest import age_local_objects, age_rows, make_variants
from tests.support.databases import truncate_all
from tests.support.servers import free_port

PUSHES = 100
HOUR = 3600
# Time the server gets between its start and the next SIGKILL, in seconds, and the
# number of kills. A restart costs seconds of imports, so more kills mostly add waiting.
KILL_AFTER = (0.3, 2.0)
KILLS = 5


class ServerProcess:
    """`adapterreg serve` in a subprocess that can be killed and started again."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env = env
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log_path.open("ab")
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"adapterreg serve exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"adapterreg serve on port {self.port} did not answer in 60 s")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def crash_env(
    tmp_path: Path, postgres_url: str, postgres_engine: Engine
) -> Iterator[dict[str, str]]:
    truncate_all(postgres_engine)
    yield {
        **os.environ,
        "ADAPTERREG_DATABASE_URL": postgres_url,
        "ADAPTERREG_STORAGE_URL": (tmp_path / "blobs").resolve().as_uri(),
        "ADAPTERREG_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
    }
    truncate_all(postgres_engine)


@pytest.fixture
def server(crash_env: dict[str, str], tmp_path: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(crash_env, free_port(), tmp_path / "server.log")
    process.start()
    yield process
    process.stop()


def push_until_done(client: RegistryClient, directory: Path) -> tuple[dict[str, Any], int]:
    """Push ``directory``, retrying while the server is down; return the result and retries."""
    retries = 0
    while True:
        try:
            return client.push("crashy", directory, base_model="tiny"), retries
        except (errors.ServiceUnavailable, errors.StorageError):
            retries += 1
            time.sleep(0.1)
        if retries > 500:
            raise RuntimeError(f"push of {directory.name} kept failing")


def kill_repeatedly(server: ServerProcess, stop: threading.Event, seed: int) -> None:
    chance = random.Random(seed)
    while server.kills < KILLS and not stop.wait(chance.uniform(*KILL_AFTER)):
        server.kill()
        server.start()


def sha256_of_object(store: LocalBlobStore, digest: str) -> str:
    hasher = hashlib.sha256()
    for chunk in store.open_blob(digest):
        hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_pushes_survive_sigkill(
    server: ServerProcess,
    crash_env: dict[str, str],
    postgres_engine: Engine,
    tiny_base: Path,
    tiny_lora: Path,
    tmp_path: Path,
) -> None:
    variants = make_variants(tiny_lora, tmp_path / "variants", PUSHES)
    client = RegistryClient(server.url, state_dir=tmp_path / "client-state")
    client.register_base_model("tiny", tiny_base)
    stop = threading.Event()
    killer = threading.Thread(target=kill_repeatedly, args=(server, stop, 1234), daemon=True)

    killer.start()
    try:
        outcomes = [push_until_done(client, directory) for directory in variants]
    finally:
        stop.set()
        killer.join(timeout=120)
    if server.process is None or server.process.poll() is not None:
        server.start()

    versions = sorted(result["version"] for result, _ in outcomes)
    retries = sum(count for _, count in outcomes)
    print(f"{server.kills} kills, {retries} retried pushes")
    assert server.kills >= 3
    assert len(set(versions)) == PUSHES
    assert len({result["digest"] for result, _ in outcomes}) == PUSHES
    assert_every_version_complete(postgres_engine, LocalBlobStore(tmp_path / "blobs"))
    # The counter increment rolls back with a killed commit, and a push killed after
    # its commit gets the same version on retry, so no number is skipped.
    assert versions == list(range(1, PUSHES + 1))


def assert_every_version_complete(engine: Engine, store: LocalBlobStore) -> None:
    """Each version has its two files, each file its blob row and an intact object."""
    with engine.connect() as connection:
        version_count = connection.scalar(select(func.count()).select_from(AdapterVersion))
        files_per_version = connection.execute(
            select(VersionFile.version_id, func.count()).group_by(VersionFile.version_id)
        ).all()
        digests = set(connection.scalars(select(VersionFile.digest)))
        recorded = set(connection.scalars(select(Blob.digest)))
    assert version_count == PUSHES
    assert len(files_per_version) == PUSHES
    assert {count for _, count in files_per_version} == {2}
    assert digests <= recorded
    for digest in digests:
        assert sha256_of_object(store, digest) == digest


def test_gc_after_crashes_keeps_uploads_in_flight(
    server: ServerProcess,
    crash_env: dict[str, str],
    postgres_engine: Engine,
    tiny_base: Path,
    tiny_lora: Path,
    tmp_path: Path,
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    client = RegistryClient(server.url, state_dir=tmp_path / "client-state")
    client.register_base_model("tiny", tiny_base)
    first, pending = make_variants(tiny_lora, tmp_path / "variants", 2)
    client.push("crashy", first, base_model="tiny")
    orphan = put_orphan(server, os.urandom(4000))
    killed_upload = start_upload(server, os.urandom(6000))
    server.kill()
    server.start()
    # Everything so far is older than the grace period.
    age_rows(postgres_engine, seconds=2 * HOUR)
    age_local_objects(store, seconds=2 * HOUR)
    # In flight now: blobs uploaded for a commit not sent yet, and an open resumable upload.
    entries = adapter_file_entries(pending)
    client.upload_files(pending, entries)
    open_upload = start_upload(server, os.urandom(7000))

    result = run_cli(crash_env, "gc", "--grace-seconds", str(HOUR), "--json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [blob["digest"] for blob in report["deleted_blobs"]] == [orphan]
    assert report["aborted_uploads"] == [killed_upload]
    assert not store.has_blob(orphan)
    for entry in entries:
        assert store.has_blob(entry.digest)
    with postgres_engine.connect() as connection:
        sessions = set(connection.scalars(select(UploadSession.id)))
    assert sessions == {open_upload}
    # The commit whose blobs were uploaded before gc still succeeds, without re-uploading.
    committed = client.push("crashy", pending, base_model="tiny")
    assert committed["version"] == 2
    assert complete_upload(server, open_upload) == 200
    integrity = check_integrity(_uow(postgres_engine), store, LOCAL_ADMIN)
    assert integrity["ok"], integrity["problems"]


def put_orphan(server: ServerProcess, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    httpx.put(f"{server.url}/api/v1/blobs/{digest}", content=data).raise_for_status()
    return digest


def start_upload(server: ServerProcess, data: bytes) -> str:
    """Open a resumable upload and send its only part; return the upload id."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = httpx.post(
        f"{server.url}/api/v1/uploads", json={"digest": digest, "size": len(data)}
    )
    response.raise_for_status()
    upload_id: str = response.json()["upload_id"]
    httpx.put(f"{server.url}/api/v1/uploads/{upload_id}/parts/1", content=data).raise_for_status()
    return upload_id


def complete_upload(server: ServerProcess, upload_id: str) -> int:
    response = httpx.post(f"{server.url}/api/v1/uploads/{upload_id}/complete", timeout=30)
    return response.status_code


def _uow(engine: Engine) -> UnitOfWork:
    factory = create_session_factory(engine)

    def unit_of_work() -> AbstractContextManager[Session]:
        return session_scope(factory)

    return unit_of_work
