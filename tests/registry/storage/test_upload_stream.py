"""Upload bodies streamed over real HTTP into the store, including a client that drops mid-body."""

from __future__ import annotations

import hashlib
import os
import socket
import time
import urllib.parse
from collections.abc import Iterator

import httpx

from tests.support.fixtures import LiveRegistry, MiB


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def send_partial_request(url: str, path: str, *, declared: int, body: bytes) -> None:
    """Send a PUT that declares ``declared`` body bytes, send only ``body``, then hang up."""
    parsed = urllib.parse.urlsplit(url)
    head = (
        f"PUT {path} HTTP/1.1\r\n"
        f"Host: {parsed.netloc}\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    with socket.create_connection((parsed.hostname, parsed.port)) as sock:
        sock.sendall(head.encode() + body)
        # Let the server start streaming the part into the store before the hang-up.
        time.sleep(0.5)


def test_part_dropped_mid_body_then_resent(live_registry: LiveRegistry) -> None:
    data = os.urandom(6 * MiB + 123)
    digest = digest_of(data)
    client = live_registry.client
    upload = client._json("POST", "/uploads", json={"digest": digest, "size": len(data)})
    part_size = upload["part_size"]
    base = f"/api/v1/uploads/{upload['upload_id']}"

    send_partial_request(live_registry.url, f"{base}/parts/1", declared=part_size, body=data[:MiB])
    state = httpx.get(f"{live_registry.url}{base}").json()
    # The hung-up request must release the part, or sending it again would block.
    httpx.put(f"{live_registry.url}{base}/parts/1", content=data[:part_size]).raise_for_status()
    httpx.put(f"{live_registry.url}{base}/parts/2", content=data[part_size:]).raise_for_status()
    completed = httpx.post(f"{live_registry.url}{base}/complete")

    assert state["received_parts"] == []
    assert completed.status_code == 200
    assert completed.json() == {"digest": digest, "size": len(data)}
    assert b"".join(live_registry.store.open_blob(digest)) == data


def test_blob_dropped_mid_body_not_stored(live_registry: LiveRegistry) -> None:
    data = os.urandom(9 * MiB)
    digest = digest_of(data)

    send_partial_request(
        live_registry.url, f"/api/v1/blobs/{digest}", declared=len(data), body=data[: 5 * MiB]
    )
    stored_while_dropped = live_registry.store.has_blob(digest)
    sent_again = httpx.put(f"{live_registry.url}/api/v1/blobs/{digest}", content=data)

    assert not stored_while_dropped
    assert live_registry.client.missing_blobs([digest]) == []
    assert sent_again.status_code == 201
    assert b"".join(live_registry.store.open_blob(digest)) == data


def test_large_part_streams_in_order(live_registry: LiveRegistry) -> None:
    # Several read-ahead batches per part, sent by a generator in small pieces.
    data = os.urandom(11 * MiB)
    digest = digest_of(data)
    client = live_registry.client
    upload = client._json("POST", "/uploads", json={"digest": digest, "size": len(data)})
    part_size = upload["part_size"]
    base = f"{live_registry.url}/api/v1/uploads/{upload['upload_id']}"

    def pieces(payload: bytes) -> Iterator[bytes]:
        for start in range(0, len(payload), 100_000):
            yield payload[start : start + 100_000]

    for number, start in enumerate(range(0, len(data), part_size), start=1):
        payload = data[start : start + part_size]
        response = httpx.put(
            f"{base}/parts/{number}",
            content=pieces(payload),
            headers={"Content-Length": str(len(payload))},
        )
        response.raise_for_status()
    completed = httpx.post(f"{base}/complete")

    assert completed.status_code == 200
    assert b"".join(live_registry.store.open_blob(digest)) == data
