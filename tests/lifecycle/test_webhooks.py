"""Outbox events and their signed webhook deliveries to a loopback receiver."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from registry.api.app import create_app
from registry.config import Settings
from registry.db.models import OutboxEvent
from registry.db.session import create_session_factory, session_scope
from registry.errors import InvalidInput
from registry.services.webhooks import enqueue_event
from registry.storage.base import BlobStore
from registry.webhook_delivery import (
    SIGNATURE_HEADER,
    DeliveryOptions,
    WebhookDeliverer,
    verify_signature,
)
from tests.lifecycle.conftest import evaluate_as_worker
from tests.support.fixtures import LiveRegistry

SECRET = "test-webhook-secret"


@dataclass
class Receiver:
    """A loopback HTTP server that records requests and fails the first ``failures``."""

    url: str = ""
    failures: int = 0
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.received.append((dict(self.headers), body))
            failing = len(state.received) <= state.failures
            self.send_response(500 if failing else 204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def deliverer(engine: Engine, receiver: Receiver) -> WebhookDeliverer:
    return WebhookDeliverer(
        create_session_factory(engine),
        urls=[receiver.url],
        secret=SECRET,
        options=DeliveryOptions(base_delay=0.05, max_attempts=4, timeout=5),
    )


def test_promotion_event_signed_and_verified(registry: LiveRegistry, receiver: Receiver) -> None:
    registry.client.request_promotion("chat@1", "staging", datasets=["words@1"])
    evaluate_as_worker(registry.client, "w1", candidate_loss=2.0, base_loss=2.5)
    sender = deliverer(registry.engine, receiver)
    try:
        assert sender.run_once() == 5
    finally:
        sender.stop()
    by_type = {}
    for headers, body in receiver.received:
        assert verify_signature(body, headers[SIGNATURE_HEADER], SECRET)
        assert not verify_signature(body, headers[SIGNATURE_HEADER], "another-secret")
        document = json.loads(body)
        by_type[document["type"]] = document
    moved = by_type["alias.moved"]["data"]
    assert moved["adapter"] == "chat"
    assert moved["to_version"] == 1
    assert moved["evidence"]["kind"] == "promotion"
    assert by_type["promotion.promoted"]["data"]["state"] == "promoted"


def test_tampered_body_fails_verification(registry: LiveRegistry, receiver: Receiver) -> None:
    with session_scope(create_session_factory(registry.engine)) as session:
        enqueue_event(session, "test.event", {"value": 1})
    sender = deliverer(registry.engine, receiver)
    try:
        sender.run_once()
    finally:
        sender.stop()
    ((headers, body),) = receiver.received
    tampered = body.replace(b'"value":1', b'"value":2')
    assert tampered != body
    assert not verify_signature(tampered, headers[SIGNATURE_HEADER], SECRET)


def test_failed_delivery_retried_and_logged(registry: LiveRegistry, receiver: Receiver) -> None:
    receiver.failures = 2
    with session_scope(create_session_factory(registry.engine)) as session:
        enqueue_event(session, "test.event", {"value": 1})
    sender = deliverer(registry.engine, receiver)
    try:
        sent_at = []
        deadline = time.monotonic() + 10
        while len(receiver.received) < 3 and time.monotonic() < deadline:
            if sender.run_once():
                sent_at.append(time.monotonic())
            time.sleep(0.01)
    finally:
        sender.stop()
    assert len(receiver.received) == 3
    # Backoff: 0.05 s after the first failure, 0.1 s after the second.
    assert sent_at[1] - sent_at[0] >= 0.05
    assert sent_at[2] - sent_at[1] >= 0.1
    (delivery,) = registry.client.list_webhook_deliveries()
    assert delivery["state"] == "delivered"
    log = registry.client.get_webhook_delivery(delivery["id"])["attempt_log"]
    assert [entry["status_code"] for entry in log] == [500, 500, 204]
    assert [entry["attempt"] for entry in log] == [1, 2, 3]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_delivery_gives_up_after_max_attempts(registry: LiveRegistry, receiver: Receiver) -> None:
    receiver.failures = 100
    with session_scope(create_session_factory(registry.engine)) as session:
        enqueue_event(session, "test.event", {"value": 1})
    sender = deliverer(registry.engine, receiver)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not registry.client.list_webhook_deliveries(
            state="failed"
        ):
            sender.run_once()
            time.sleep(0.02)
    finally:
        sender.stop()
    (delivery,) = registry.client.list_webhook_deliveries()
    assert delivery["state"] == "failed"
    assert delivery["attempts"] == 4
    assert len(receiver.received) == 4


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_outbox_event_rolls_back_with_change(engine: Engine) -> None:
    factory = create_session_factory(engine)
    with pytest.raises(RuntimeError), session_scope(factory) as session:
        enqueue_event(session, "test.event", {"value": 1})
        session.flush()
        raise RuntimeError("the change fails")
    with session_scope(factory) as session:
        assert session.scalar(select(func.count()).select_from(OutboxEvent)) == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_deliverer_needs_secret(engine: Engine, receiver: Receiver) -> None:
    with pytest.raises(InvalidInput) as invalid:
        WebhookDeliverer(create_session_factory(engine), urls=[receiver.url], secret=None)
    assert "ADAPTERREG_WEBHOOK_SECRET" in invalid.value.detail


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_server_lifespan_runs_deliverer(
    engine: Engine, store: BlobStore, registry_settings: Settings, receiver: Receiver
) -> None:
    settings = replace(registry_settings, webhook_urls=[receiver.url], webhook_secret=SECRET)
    app = create_app(settings, engine=engine, store=store, open_access=True)
    with session_scope(create_session_factory(engine)) as session:
        enqueue_event(session, "test.event", {"value": 1})
    with TestClient(app):
        deadline = time.monotonic() + 10
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.05)
    ((headers, body),) = receiver.received
    assert verify_signature(body, headers[SIGNATURE_HEADER], SECRET)
    assert json.loads(body)["type"] == "test.event"
