"""The promotion worker: claims requests, evaluates them, posts the results.

Any number of workers may run on any machines against one registry; the
registry hands each request to one worker at a time (see
``registry.services.promotions``). While a worker evaluates, a background
thread renews its lease every third of the lease, so only a dead or hung
worker loses its request to another.

For every dataset of a request the worker evaluates the candidate, the
alias's current version (when there is one) and the bare base model, whose
results are cached across requests. It then posts the evaluation ids, and the
registry applies the gate.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import replace
from types import TracebackType
from typing import Any

from registry import errors
from trainer.evaluate import EvalSettings, Evaluator, task_of

log = logging.getLogger(__name__)

# Errors that the same request would hit again on any worker: fail it at once.
# NotFound is retried, because another worker may have the base model's files.
PERMANENT_ERRORS = (errors.InvalidInput, errors.IntegrityError)


def default_worker_name() -> str:
    """Return ``host-pid-random``, unique per worker process."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def run_worker(
    client: Any,
    *,
    name: str | None = None,
    once: bool = False,
    poll_interval: float = 2.0,
    lease_seconds: int = 600,
    settings: EvalSettings | None = None,
    request_id: int | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Process requests until ``stop`` is set (or one pass with ``once``); return the count."""
    name = name or default_worker_name()
    settings = settings or EvalSettings()
    stop = stop or threading.Event()
    processed = 0
    log.info("worker %s started", name)
    while not stop.is_set():
        claim = _claim_next(client, name, lease_seconds=lease_seconds, request_id=request_id)
        if claim is not None:
            process_claim(
                client, claim, worker=name, settings=settings, lease_seconds=lease_seconds
            )
            processed += 1
        if once:
            break
        if claim is None:
            stop.wait(poll_interval)
    log.info("worker %s stopped after %d request(s)", name, processed)
    return processed


def _claim_next(
    client: Any, worker: str, *, lease_seconds: int, request_id: int | None
) -> dict[str, Any] | None:
    """Claim a request, or return None when none waits or the registry cannot be reached."""
    try:
        claim: dict[str, Any] | None = client.claim_promotion(
            worker, lease_seconds=lease_seconds, request_id=request_id
        )
    except errors.ServiceUnavailable as error:
        # A long-running worker outlives registry restarts because it polls again later.
        log.warning("worker %s could not claim a request: %s", worker, error.detail)
        return None
    return claim


def process_claim(
    client: Any, claim: dict[str, Any], *, worker: str, settings: EvalSettings, lease_seconds: int
) -> dict[str, Any] | None:
    """Evaluate one claimed request and post the results (or the error).

    Returns the request as the registry left it, or None when the registry did
    not accept the report (see ``_report``).
    """
    request_id = claim["id"]
    log.info(
        "worker %s evaluating promotion %s: %s -> %s on %s",
        worker,
        request_id,
        claim["candidate"],
        claim["alias"],
        claim["datasets"],
    )
    try:
        with LeaseKeeper(client, request_id, worker, lease_seconds=lease_seconds):
            evaluation_ids = evaluate_claim(client, claim, settings=settings)
    except KeyboardInterrupt:
        # Hand the request back now rather than when the lease runs out.
        _report(client.fail_promotion, request_id, worker, error="worker interrupted", retry=True)
        raise
    except Exception as error:
        # Any failure is reported, so the request is retried or failed instead of
        # waiting for the lease to run out.
        log.exception("worker %s: promotion %s failed", worker, request_id)
        detail = error.detail if isinstance(error, errors.RegistryError) else str(error)
        return _report(
            client.fail_promotion,
            request_id,
            worker,
            error=f"{type(error).__name__}: {detail}",
            retry=not isinstance(error, PERMANENT_ERRORS),
        )
    try:
        result = _report(client.submit_promotion_results, request_id, worker, evaluation_ids)
    except errors.InvalidInput as error:
        # The registry rejected these evaluations; the same worker code would send
        # the same ones again, so the request fails instead of being retried.
        log.error("worker %s: promotion %s results rejected: %s", worker, request_id, error.detail)
        return _report(
            client.fail_promotion,
            request_id,
            worker,
            error=f"results rejected: {error.detail}",
            retry=False,
        )
    if result is not None:
        log.info("worker %s: promotion %s is now %s", worker, request_id, result["state"])
    return result


def _report(
    send: Any, request_id: int, worker: str, *args: Any, **kwargs: Any
) -> dict[str, Any] | None:
    """Post a result or an error and return the request, or None on a lost claim or outage.

    Conflict means another worker claimed the request after this one's lease ran
    out; its report counts instead. When the registry is unreachable, the lease
    runs out and another worker claims the request again. Neither ends the worker.
    """
    try:
        return dict(send(request_id, worker, *args, **kwargs))
    except (errors.Conflict, errors.ServiceUnavailable) as error:
        log.warning(
            "worker %s: the report on promotion %s was not accepted: %s",
            worker,
            request_id,
            error.detail,
        )
        return None


def evaluate_claim(client: Any, claim: dict[str, Any], *, settings: EvalSettings) -> list[int]:
    """Evaluate candidate, current version and base on each dataset; return evaluation ids."""
    evaluator = Evaluator(client, replace(settings, split=claim["split"]))
    candidate = client.get_version(claim["candidate"])
    current = client.get_version(claim["current"]) if claim["current"] else None
    task = task_of(candidate)
    request_id = claim["id"]
    ids: list[int] = []
    for ref in claim["datasets"]:
        data = evaluator.dataset(ref)
        for version in (candidate, current):
            if version is not None:
                ids.append(
                    evaluator.evaluate_version(version, data, promotion_request_id=request_id)["id"]
                )
        base, _cached = evaluator.evaluate_base(
            candidate["base_model"]["name"], task, data, promotion_request_id=request_id
        )
        ids.append(base["id"])
    return ids


class LeaseKeeper:
    """Renews a claim's lease from a daemon thread while the ``with`` block runs."""

    def __init__(self, client: Any, request_id: int, worker: str, *, lease_seconds: int) -> None:
        self._client = client
        self._request_id = request_id
        self._worker = worker
        self._lease_seconds = lease_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{request_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _renew(self) -> None:
        interval = max(self._lease_seconds / 3, 0.5)
        next_renewal = time.monotonic() + interval
        while not self._stop.wait(max(next_renewal - time.monotonic(), 0.0)):
            try:
                self._client.renew_promotion_lease(
                    self._request_id, self._worker, lease_seconds=self._lease_seconds
                )
            except errors.Conflict as error:
                # Another worker owns the request now; its result will count, ours not.
                log.warning(
                    "worker %s lost promotion %s: %s", self._worker, self._request_id, error.detail
                )
                return
            except errors.RegistryError as error:
                log.warning(
                    "worker %s could not renew the lease of promotion %s: %s",
                    self._worker,
                    self._request_id,
                    error.detail,
                )
            next_renewal = time.monotonic() + interval
