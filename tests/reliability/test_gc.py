"""Garbage collection: what it deletes, what it must keep, and races with uploads and commits."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from registry import errors
from registry.db.models import AdapterVersion, Blob, UploadSession
from registry.services import gc as gc_module
from registry.services.actors import LOCAL_ADMIN, Actor
from registry.services.commit import commit_version
from registry.services.fsck import check_integrity
from registry.services.gc import collect_garbage
from registry.storage import LocalBlobStore
from registry.storage.base import upload_prefix
from tests.reliability.conftest import (
    age_rows,
    make_variants,
    read_object,
    s3_client,
)
from tests.support.fixtures import LiveRegistry, MiB

HOUR = 3600


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def run_gc(registry: LiveRegistry, *, grace_seconds: int, dry_run: bool = False) -> dict[str, Any]:
    state = registry.app.state.registry
    return collect_garbage(
        state.unit_of_work,
        registry.store,
        LOCAL_ADMIN,
        grace_seconds=grace_seconds,
        dry_run=dry_run,
    )


def upload_orphan(registry: LiveRegistry, data: bytes) -> str:
    digest = digest_of(data)
    response = httpx.put(f"{registry.url}/api/v1/blobs/{digest}", content=data)
    assert response.status_code == 201, response.text
    return digest


def blob_rows(registry: LiveRegistry) -> set[str]:
    with registry.engine.connect() as connection:
        return set(connection.scalars(select(Blob.digest)))


@pytest.fixture
def pushed(live_registry: LiveRegistry, tiny_base: Path, tiny_lora: Path) -> dict[str, Any]:
    live_registry.client.register_base_model("tiny", tiny_base)
    return live_registry.client.push("chat", tiny_lora, base_model="tiny")


def test_gc_deletes_old_orphan_and_keeps_referenced(
    live_registry: LiveRegistry, pushed: dict[str, Any]
) -> None:
    orphan = upload_orphan(live_registry, os.urandom(3000))
    age_rows(live_registry.engine, seconds=2 * HOUR)

    report = run_gc(live_registry, grace_seconds=HOUR)

    assert [blob["digest"] for blob in report["deleted_blobs"]] == [orphan]
    assert report["deleted_bytes"] == 3000
    assert orphan not in blob_rows(live_registry)
    assert not live_registry.store.has_blob(orphan)
    for entry in pushed["files"]:
        assert live_registry.store.has_blob(entry["digest"])
    assert check_integrity(
        live_registry.app.state.registry.unit_of_work, live_registry.store, LOCAL_ADMIN
    )["ok"]


def test_gc_keeps_orphan_within_grace(live_registry: LiveRegistry) -> None:
    orphan = upload_orphan(live_registry, os.urandom(100))

    report = run_gc(live_registry, grace_seconds=HOUR)

    assert report["deleted_blobs"] == []
    assert report["kept_within_grace"] == 1
    assert live_registry.store.has_blob(orphan)
    assert orphan in blob_rows(live_registry)


def test_gc_dry_run_deletes_nothing(live_registry: LiveRegistry) -> None:
    orphan = upload_orphan(live_registry, os.urandom(100))
    age_rows(live_registry.engine, seconds=2 * HOUR)

    report = run_gc(live_registry, grace_seconds=HOUR, dry_run=True)

    assert [blob["digest"] for blob in report["deleted_blobs"]] == [orphan]
    assert report["dry_run"] is True
    assert live_registry.store.has_blob(orphan)
    assert orphan in blob_rows(live_registry)


def test_gc_keeps_base_model_and_dataset_blobs(
    live_registry: LiveRegistry, tiny_base: Path, tmp_path: Path
) -> None:
    base = live_registry.client.register_base_model("uploaded", tiny_base, upload=True)
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "a"}\n{"text": "b"}\n')
    dataset = live_registry.client.register_dataset("rows", data, upload=True)
    age_rows(live_registry.engine, seconds=2 * HOUR)

    report = run_gc(live_registry, grace_seconds=HOUR)

    assert report["deleted_blobs"] == []
    for entry in base["files"]:
        assert live_registry.store.has_blob(entry["digest"])
    assert live_registry.store.has_blob(dataset["digest"])


def test_gc_keeps_blob_of_open_upload(live_registry: LiveRegistry) -> None:
    data = os.urandom(100)
    digest = upload_orphan(live_registry, data)
    upload = live_registry.client._json("POST", "/uploads", json={"digest": digest, "size": 100})
    age_rows(live_registry.engine, seconds=2 * HOUR)
    # The session itself is fresh again: a part arrived just now.
    httpx.put(
        f"{live_registry.url}/api/v1/uploads/{upload['upload_id']}/parts/1", content=data
    ).raise_for_status()

    report = run_gc(live_registry, grace_seconds=HOUR)

    assert report["deleted_blobs"] == []
    assert report["aborted_uploads"] == []
    assert live_registry.store.has_blob(digest)
    staged = {item.upload_id for item in live_registry.store.iter_staged_uploads()}
    assert upload["upload_id"] in staged


def test_gc_aborts_idle_upload(live_registry: LiveRegistry) -> None:
    data = os.urandom(6 * MiB)
    upload = live_registry.client._json(
        "POST", "/uploads", json={"digest": digest_of(data), "size": len(data)}
    )
    upload_id = upload["upload_id"]
    httpx.put(
        f"{live_registry.url}/api/v1/uploads/{upload_id}/parts/1", content=data[: 5 * MiB]
    ).raise_for_status()
    age_rows(live_registry.engine, seconds=2 * HOUR)

    report = run_gc(live_registry, grace_seconds=HOUR)

    assert report["aborted_uploads"] == [upload_id]
    with live_registry.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(UploadSession)) == 0
    staged = {item.upload_id for item in live_registry.store.iter_staged_uploads()}
    assert upload_id not in staged
    response = httpx.get(f"{live_registry.url}/api/v1/uploads/{upload_id}")
    assert response.status_code == 404


def test_gc_removes_staged_upload_without_session(live_registry: LiveRegistry) -> None:
    """What a server killed in the middle of a large put_blob leaves under uploads/."""
    upload_id = uuid.uuid4().hex
    store = live_registry.store
    if isinstance(store, LocalBlobStore):
        staging = store.root / upload_prefix(upload_id)
        staging.mkdir(parents=True)
        (staging / "blob").write_bytes(os.urandom(1000))
    else:
        key = store.prefix + upload_prefix(upload_id) + "blob"  # type: ignore[attr-defined]
        client = s3_client(store)
        bucket = store.bucket  # type: ignore[attr-defined]
        handle = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(
            Bucket=bucket, Key=key, UploadId=handle, PartNumber=1, Body=os.urandom(1000)
        )
    assert upload_id in {item.upload_id for item in store.iter_staged_uploads()}

    report = run_gc(live_registry, grace_seconds=0)

    assert report["removed_staged_uploads"] == [upload_id]
    assert list(store.iter_staged_uploads()) == []
    if not isinstance(store, LocalBlobStore):
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert uploads == []


def test_gc_deletes_object_without_row(live_registry: LiveRegistry) -> None:
    """What a server killed between storing an object and recording its row leaves."""
    data = os.urandom(500)
    digest = digest_of(data)
    live_registry.store.put_blob(digest, [data], max_bytes=MiB)

    kept = run_gc(live_registry, grace_seconds=HOUR)
    assert kept["deleted_unrecorded_objects"] == []
    report = run_gc(live_registry, grace_seconds=0)

    assert report["deleted_unrecorded_objects"] == [digest]
    assert not live_registry.store.has_blob(digest)


def test_gc_rejects_negative_grace(live_registry: LiveRegistry) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        run_gc(live_registry, grace_seconds=-1)
    assert "-1" in caught.value.detail


def test_gc_needs_admin(live_registry: LiveRegistry) -> None:
    state = live_registry.app.state.registry
    with pytest.raises(errors.Forbidden):
        collect_garbage(
            state.unit_of_work, live_registry.store, Actor("w", "writer"), grace_seconds=0
        )


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except Exception as error:  # reported to the test through outcome
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _upload_adapter_blobs(registry: LiveRegistry, directory: Path) -> list[dict[str, Any]]:
    from registry.client import adapter_file_entries

    entries = adapter_file_entries(directory)
    registry.client.upload_files(directory, entries)
    return [entry.to_dict() for entry in entries]


def test_gc_waits_for_commit_in_flight(
    live_registry: LiveRegistry, tiny_base: Path, tiny_lora: Path
) -> None:
    """A commit that checked its blobs holds them: gc running meanwhile keeps them."""
    live_registry.client.register_base_model("tiny", tiny_base)
    files = _upload_adapter_blobs(live_registry, tiny_lora)
    age_rows(live_registry.engine, seconds=2 * HOUR)
    state = live_registry.app.state.registry

    with state.unit_of_work() as session:
        commit_version(
            session,
            live_registry.store,
            LOCAL_ADMIN,
            name="chat",
            spec={"base_model": "tiny", "files": files},
            max_header_bytes=MiB,
        )
        gc_thread, outcome = _in_thread(lambda: run_gc(live_registry, grace_seconds=HOUR))
        gc_thread.join(timeout=1.0)
        # gc waits on the rows this transaction holds until it commits.
        assert gc_thread.is_alive()
    gc_thread.join(timeout=60)

    assert "error" not in outcome
    assert outcome["result"]["deleted_blobs"] == []
    for entry in files:
        stored = read_object(live_registry.store, entry["digest"])
        assert stored == (tiny_lora / entry["path"]).read_bytes()
    assert check_integrity(state.unit_of_work, live_registry.store, LOCAL_ADMIN)["ok"]


def test_commit_after_gc_deleted_blob_is_not_found(
    live_registry: LiveRegistry,
    tiny_base: Path,
    tiny_lora: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gc that locked a blob first wins; the commit then finds it missing and can re-upload."""
    live_registry.client.register_base_model("tiny", tiny_base)
    files = _upload_adapter_blobs(live_registry, tiny_lora)
    age_rows(live_registry.engine, seconds=2 * HOUR)
    state = live_registry.app.state.registry
    commits: list[tuple[threading.Thread, dict[str, Any]]] = []
    original_check = gc_module._is_named_in_json

    def commit_meanwhile(session: Any, digest: str) -> bool:
        # gc holds the blob row FOR UPDATE here: start a commit, let it reach the row.
        if not commits:
            commits.append(_in_thread(lambda: _commit(state, live_registry, files)))
            time.sleep(0.5)
        return original_check(session, digest)

    monkeypatch.setattr(gc_module, "_is_named_in_json", commit_meanwhile)
    report = run_gc(live_registry, grace_seconds=HOUR)
    thread, outcome = commits[0]
    thread.join(timeout=60)

    assert len(report["deleted_blobs"]) == len(files)
    assert isinstance(outcome.get("error"), errors.NotFound)
    assert "upload it before committing" in outcome["error"].detail
    with live_registry.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(AdapterVersion)) == 0
    # The client's push uploads the collected blobs again and commits.
    pushed = live_registry.client.push("chat", tiny_lora, base_model="tiny")
    assert pushed["version"] == 1
    assert check_integrity(state.unit_of_work, live_registry.store, LOCAL_ADMIN)["ok"]


def _commit(state: Any, registry: LiveRegistry, files: list[dict[str, Any]]) -> dict[str, Any]:
    with state.unit_of_work() as session:
        return commit_version(
            session,
            registry.store,
            LOCAL_ADMIN,
            name="chat",
            spec={"base_model": "tiny", "files": files},
            max_header_bytes=MiB,
        )


def test_reupload_during_gc_keeps_blob(
    live_registry: LiveRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload of the same bytes while gc deletes the object ends with the blob stored."""
    data = os.urandom(2000)
    digest = upload_orphan(live_registry, data)
    age_rows(live_registry.engine, seconds=2 * HOUR)
    store = live_registry.store
    uploads: list[tuple[threading.Thread, dict[str, Any]]] = []
    original_delete = store.delete_blob

    def upload_meanwhile(target: str) -> None:
        # gc holds the digest lock here and the object still exists.
        uploads.append(_in_thread(lambda: upload_orphan(live_registry, data)))
        time.sleep(0.5)
        original_delete(target)

    monkeypatch.setattr(store, "delete_blob", upload_meanwhile)
    report = run_gc(live_registry, grace_seconds=HOUR)
    thread, outcome = uploads[0]
    thread.join(timeout=60)

    assert [blob["digest"] for blob in report["deleted_blobs"]] == [digest]
    assert "error" not in outcome
    assert digest in blob_rows(live_registry)
    assert read_object(store, digest) == data


def test_gc_then_fsck_clean_after_many_pushes(
    live_registry: LiveRegistry, tiny_base: Path, tiny_lora: Path, tmp_path: Path
) -> None:
    live_registry.client.register_base_model("tiny", tiny_base)
    for directory in make_variants(tiny_lora, tmp_path, 3):
        live_registry.client.push("chat", directory, base_model="tiny")
    orphans = {upload_orphan(live_registry, os.urandom(64)) for _ in range(3)}

    report = run_gc(live_registry, grace_seconds=0)

    assert {blob["digest"] for blob in report["deleted_blobs"]} == orphans
    state = live_registry.app.state.registry
    integrity = check_integrity(state.unit_of_work, live_registry.store, LOCAL_ADMIN)
    assert integrity["ok"]
    # Three weight files and the config they share.
    assert integrity["checked"] == 4
