"""Blob uploads: digest checks on arrival, resumable parts, size limits."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from registry import errors
from registry.base_manifest import FileEntry
from tests.support.fixtures import LiveRegistry, MiB


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_blob_rejects_wrong_digest(live_registry: LiveRegistry) -> None:
    data = b"hello world"
    wrong = digest_of(b"something else")
    response = httpx.put(f"{live_registry.url}/api/v1/blobs/{wrong}", content=data)
    assert response.status_code == 422
    assert response.json()["error"] == "DigestMismatch"
    assert live_registry.client.missing_blobs([wrong]) == [wrong]


def test_put_blob_then_not_missing(live_registry: LiveRegistry) -> None:
    data = os.urandom(1000)
    digest = digest_of(data)
    response = httpx.put(f"{live_registry.url}/api/v1/blobs/{digest}", content=data)
    assert response.status_code == 201
    assert live_registry.client.missing_blobs([digest]) == []


def test_put_blob_over_limit_is_413(live_registry: LiveRegistry) -> None:
    state = live_registry.app.state.registry
    original = state.settings
    state.settings = replace(original, max_blob_bytes=100)
    try:
        data = os.urandom(1000)
        response = httpx.put(f"{live_registry.url}/api/v1/blobs/{digest_of(data)}", content=data)
    finally:
        state.settings = original
    assert response.status_code == 413
    assert response.json()["error"] == "PayloadTooLarge"


def test_multipart_upload_resumes_after_interruption(
    live_registry: LiveRegistry, tmp_path: Path
) -> None:
    data = os.urandom(12 * MiB + 123)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    entry = FileEntry(path="big.bin", size=len(data), digest=digest_of(data))
    client = live_registry.client
    client.single_request_limit = MiB
    # Start an upload and send only its first part, as a client killed mid-way would.
    upload = client._resume_or_start_upload(entry)
    part_size = upload["part_size"]
    httpx.put(
        f"{live_registry.url}/api/v1/uploads/{upload['upload_id']}/parts/1",
        content=data[:part_size],
    ).raise_for_status()

    sent_parts: list[str] = []
    original_request = client._request

    def counting_request(method: str, path: str, **kwargs):  # type: ignore[no-untyped-def]
        if "/parts/" in path:
            sent_parts.append(path.rsplit("/", 1)[-1])
        return original_request(method, path, **kwargs)

    client._request = counting_request  # type: ignore[method-assign]
    client.upload_blob(path, entry)
    assert sorted(sent_parts) == ["2", "3"]
    assert client.missing_blobs([entry.digest]) == []


def test_complete_with_missing_part_conflicts(live_registry: LiveRegistry) -> None:
    data = os.urandom(6 * MiB)
    client = live_registry.client
    upload = client._json("POST", "/uploads", json={"digest": digest_of(data), "size": len(data)})
    with pytest.raises(errors.Conflict) as caught:
        client._json("POST", f"/uploads/{upload['upload_id']}/complete")
    assert "missing parts [1, 2]" in caught.value.detail


def test_multipart_rejects_wrong_content(live_registry: LiveRegistry) -> None:
    data = os.urandom(6 * MiB)
    client = live_registry.client
    upload = client._json("POST", "/uploads", json={"digest": digest_of(b"x"), "size": len(data)})
    base = f"{live_registry.url}/api/v1/uploads/{upload['upload_id']}"
    httpx.put(f"{base}/parts/1", content=data[: 5 * MiB]).raise_for_status()
    httpx.put(f"{base}/parts/2", content=data[5 * MiB :]).raise_for_status()
    response = httpx.post(f"{base}/complete")
    assert response.status_code == 422
    assert response.json()["error"] == "DigestMismatch"
