"""The webhook deliverer: a thread that sends outbox events to ADAPTERREG_WEBHOOK_URLS.

Each request carries the event as a JSON body and the header
``X-Adapterreg-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact body
bytes under ADAPTERREG_WEBHOOK_SECRET. A receiver recomputes it over the raw
body and compares with ``hmac.compare_digest`` (see ``verify_signature``).
Failed attempts are retried with exponential backoff: 1 s, 2 s, 4 s, ... up to
``max_delay`` seconds between tries, ``max_attempts`` tries in all; every
attempt is logged in the database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass

import httpx
from sqlalchemy.orm import Session, sessionmaker

from registry.db.session import session_scope
from registry.errors import InvalidInput
from registry.services import webhooks
from registry.services.webhooks import ClaimedDelivery

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Adapterreg-Signature"
EVENT_HEADER = "X-Adapterreg-Event"
DELIVERY_HEADER = "X-Adapterreg-Delivery"


def sign_body(body: bytes, secret: str) -> str:
    """Return the signature header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, secret: str) -> bool:
    """Return whether ``header`` is the valid signature of ``body`` under ``secret``."""
    return header is not None and hmac.compare_digest(sign_body(body, secret), header)


@dataclass(frozen=True)
class DeliveryOptions:
    """Send and retry settings of the deliverer."""

    # Seconds between polls of the outbox when there was nothing to send.
    poll_interval: float = 1.0
    # Tries per delivery before it is marked failed.
    max_attempts: int = 8
    # Delay before the second try, doubled for each further try, capped at max_delay (seconds).
    base_delay: float = 1.0
    max_delay: float = 300.0
    # Seconds one HTTP request may take; also bounds how long a claim is leased.
    timeout: float = 10.0
    # Deliveries claimed per pass.
    batch_size: int = 20

    def retry_delay(self, attempt: int) -> float | None:
        """Return the wait after failed try number ``attempt``, or None when none are left."""
        if attempt >= self.max_attempts:
            return None
        return float(min(self.base_delay * 2 ** (attempt - 1), self.max_delay))


class WebhookDeliverer:
    """Sends outbox events to webhook URLs from a background thread (or one pass at a time)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        urls: list[str],
        secret: str | None,
        options: DeliveryOptions | None = None,
    ) -> None:
        if urls and not secret:
            raise InvalidInput(
                "ADAPTERREG_WEBHOOK_URLS is set but ADAPTERREG_WEBHOOK_SECRET is not; set a "
                "secret so receivers can verify the X-Adapterreg-Signature header"
            )
        self._sessions = sessions
        self._urls = list(urls)
        self._secret = secret or ""
        self.options = options or DeliveryOptions()
        self._http = httpx.Client(timeout=self.options.timeout, follow_redirects=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """Dispatch new events, send every due delivery once; return how many were sent."""
        with session_scope(self._sessions) as session:
            webhooks.dispatch_events(session, self._urls)
        with session_scope(self._sessions) as session:
            claimed = webhooks.claim_due_deliveries(
                session, limit=self.options.batch_size, lease_seconds=self.options.timeout * 3
            )
        for delivery in claimed:
            self._send(delivery)
        return len(claimed)

    def _send(self, delivery: ClaimedDelivery) -> None:
        body = json.dumps(delivery.body, sort_keys=True, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_body(body, self._secret),
            EVENT_HEADER: delivery.event_type,
            DELIVERY_HEADER: str(delivery.id),
        }
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            status = self._http.post(delivery.url, content=body, headers=headers).status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"
        duration_ms = (time.monotonic() - started) * 1000
        retry = None if error is None else self.options.retry_delay(delivery.attempt)
        with session_scope(self._sessions) as session:
            state = webhooks.record_attempt(
                session,
                delivery_id=delivery.id,
                attempt=delivery.attempt,
                status_code=status,
                error=error,
                duration_ms=duration_ms,
                retry_in_seconds=retry,
            )
        if error is not None and state == "pending":
            log.warning(
                "webhook delivery %s (event %s) attempt %d failed: %s; retry in %.1f s",
                delivery.id,
                delivery.event_id,
                delivery.attempt,
                error,
                retry,
            )

    def start(self) -> None:
        """Run passes in a daemon thread until ``stop``."""
        if not self._urls or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="webhook-deliverer", daemon=True)
        self._thread.start()
        log.info("webhook deliverer started for %d URL(s)", len(self._urls))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.run_once()
            except Exception:
                # The thread must survive a database outage; the next pass retries.
                log.exception("webhook delivery pass failed")
                sent = 0
            if not sent:
                self._stop.wait(self.options.poll_interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.options.timeout + 5)
            self._thread = None
        self._http.close()
        log.info("webhook deliverer stopped")
