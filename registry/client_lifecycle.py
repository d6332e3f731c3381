"""Client methods for evaluations, merged models, gates, promotions and webhooks.

``RegistryClient`` inherits them; they use its transport, so errors arrive as
the classes of ``registry.errors`` like every other client call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from registry import errors


class LifecycleClientMixin:
    """The lifecycle half of the registry SDK."""

    if TYPE_CHECKING:

        def _json(self, method: str, path: str, **kwargs: Any) -> Any: ...

    # Evaluations

    def record_evaluation(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Store an evaluation: subject, dataset, dataset_digest, split, task, metrics, ..."""
        result: dict[str, Any] = self._json("POST", "/evaluations", json=spec)
        return result

    def find_cached_evaluation(
        self,
        *,
        base_model: str,
        dataset: str,
        split: str,
        metrics: list[str],
        baseline: str | None,
        settings: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Return a stored base-model evaluation with exactly these inputs, or None."""
        body = {
            "base_model": base_model,
            "dataset": dataset,
            "split": split,
            "metrics": metrics,
            "baseline": baseline,
            "settings": settings,
        }
        result: dict[str, Any] | None = self._json("POST", "/evaluations/cached", json=body)[
            "evaluation"
        ]
        return result

    def list_evaluations(
        self,
        *,
        subject: str | None = None,
        dataset: str | None = None,
        promotion_request_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        params = {
            key: value
            for key, value in (
                ("subject", subject),
                ("dataset", dataset),
                ("promotion_request_id", promotion_request_id),
                ("limit", limit),
            )
            if value is not None
        }
        result: list[dict[str, Any]] = self._json("GET", "/evaluations", params=params)["items"]
        return result

    def get_evaluation(self, evaluation_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/evaluations/{evaluation_id}")
        return result

    # Merged models

    def register_merged_model(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Record a merged model: name, parents, method, dtype, max_abs_diff, files, ..."""
        result: dict[str, Any] = self._json("POST", "/merged-models", json=spec)
        return result

    def get_merged_model(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/merged-models/{name}")
        return result

    def list_merged_models(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/merged-models")["items"]
        return result

    # Gate policies

    def set_gate(
        self,
        adapter: str,
        alias: str,
        *,
        metric: str | None = None,
        min_margin: float = 0.0,
        max_regression: float = 0.0,
        require_approval: bool = False,
    ) -> dict[str, Any]:
        """Set the gate of ``adapter`` and ``alias``; '*' for either applies to every name."""
        body = {
            "metric": metric,
            "min_margin": min_margin,
            "max_regression": max_regression,
            "require_approval": require_approval,
        }
        result: dict[str, Any] = self._json("PUT", f"/gates/{adapter}/{alias}", json=body)
        return result

    def get_gate(self, adapter: str, alias: str) -> dict[str, Any]:
        """Return the policy a promotion of ``adapter`` to ``alias`` would be judged by."""
        result: dict[str, Any] = self._json("GET", f"/gates/{adapter}/{alias}")
        return result

    def list_gates(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/gates")["items"]
        return result

    # Promotions

    def request_promotion(
        self,
        ref: str,
        alias: str,
        *,
        datasets: list[str] | tuple[str, ...] = (),
        split: str = "test",
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Open a promotion of ``ref`` (name@version) to ``alias``."""
        body = {
            "ref": ref,
            "alias": alias,
            "datasets": list(datasets),
            "split": split,
            "reason": reason,
        }
        result: dict[str, Any] = self._json("POST", "/promotions", json=body)
        return result

    def list_promotions(
        self, *, adapter: str | None = None, state: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        params = {
            key: value
            for key, value in (("adapter", adapter), ("state", state), ("limit", limit))
            if value is not None
        }
        result: list[dict[str, Any]] = self._json("GET", "/promotions", params=params)["items"]
        return result

    def get_promotion(self, request_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/promotions/{request_id}")
        return result

    def claim_promotion(
        self, worker: str, *, lease_seconds: int = 600, request_id: int | None = None
    ) -> dict[str, Any] | None:
        """Claim the oldest claimable request (or ``request_id``); None when none waits."""
        body = {"worker": worker, "lease_seconds": lease_seconds, "request_id": request_id}
        result: dict[str, Any] | None = self._json("POST", "/promotions/claim", json=body)[
            "request"
        ]
        return result

    def renew_promotion_lease(
        self, request_id: int, worker: str, *, lease_seconds: int = 600
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST",
            f"/promotions/{request_id}/lease",
            json={"worker": worker, "lease_seconds": lease_seconds},
        )
        return result

    def submit_promotion_results(
        self, request_id: int, worker: str, evaluation_ids: list[int]
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST",
            f"/promotions/{request_id}/results",
            json={"worker": worker, "evaluation_ids": evaluation_ids},
        )
        return result

    def fail_promotion(
        self, request_id: int, worker: str, *, error: str, retry: bool = True
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST",
            f"/promotions/{request_id}/fail",
            json={"worker": worker, "error": error, "retry": retry},
        )
        return result

    def approve_promotion(self, request_id: int, *, reason: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST", f"/promotions/{request_id}/approve", json={"reason": reason}
        )
        return result

    def reject_promotion(self, request_id: int, *, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST", f"/promotions/{request_id}/reject", json={"reason": reason}
        )
        return result

    def wait_for_promotion(
        self,
        request_id: int,
        *,
        timeout: float,
        poll_interval: float = 1.0,
        until: tuple[str, ...] = ("rejected", "awaiting_approval", "promoted", "failed"),
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the request reaches a state in ``until``; ServiceUnavailable on timeout.

        ``on_update`` is called with the request each time its state changes.
        """
        deadline = time.monotonic() + timeout
        last_state = None
        while True:
            request = self.get_promotion(request_id)
            if request["state"] != last_state:
                last_state = request["state"]
                if on_update is not None:
                    on_update(request)
            if request["state"] in until:
                return request
            if time.monotonic() >= deadline:
                raise errors.ServiceUnavailable(
                    f"promotion {request_id} is still {request['state']} after {timeout:.0f} s; "
                    "is a worker running? (`adapterreg worker`, or `promote --local`)"
                )
            time.sleep(poll_interval)

    # Webhooks

    def list_outbox_events(self, *, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json(
            "GET", "/webhooks/events", params={"after_id": after_id, "limit": limit}
        )["items"]
        return result

    def list_webhook_deliveries(
        self, *, event_id: int | None = None, state: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        params = {
            key: value
            for key, value in (("event_id", event_id), ("state", state), ("limit", limit))
            if value is not None
        }
        result: list[dict[str, Any]] = self._json("GET", "/webhooks/deliveries", params=params)[
            "items"
        ]
        return result

    def get_webhook_delivery(self, delivery_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/webhooks/deliveries/{delivery_id}")
        return result
