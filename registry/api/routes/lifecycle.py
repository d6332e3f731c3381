"""Evaluations, merged models, gate policies, promotions and webhook deliveries.

The router's lifespan runs the webhook deliverer in the server process when
ADAPTERREG_WEBHOOK_URLS is set.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

from registry.api.deps import ActorDep, AppState, SessionDep
from registry.api.errors import error_responses
from registry.api.lifecycle_schemas import (
    ApproveIn,
    CachedEvaluationIn,
    ClaimIn,
    EvaluationIn,
    FailIn,
    GateIn,
    LeaseIn,
    MergedModelIn,
    PromotionIn,
    RejectIn,
    ResultsIn,
)
from registry.api.routing import RegistryRoute
from registry.services import evaluations, gates, merges, promotions, webhooks
from registry.webhook_delivery import WebhookDeliverer


@asynccontextmanager
async def deliver_webhooks(app: FastAPI) -> AsyncIterator[None]:
    """Send outbox events to the configured webhook URLs while the server runs."""
    state: AppState = app.state.registry
    deliverer = WebhookDeliverer(
        state.sessions, urls=state.settings.webhook_urls, secret=state.settings.webhook_secret
    )
    deliverer.start()
    try:
        yield
    finally:
        deliverer.stop()


router = APIRouter(lifespan=deliver_webhooks, route_class=RegistryRoute)


# Evaluations


@router.post(
    "/evaluations",
    status_code=201,
    tags=["evaluations"],
    responses=error_responses(401, 403, 404, 422),
)
def record_evaluation(body: EvaluationIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Record the metrics of a base model, adapter version or merged model on a dataset split."""
    return evaluations.record_evaluation(session, actor, body.model_dump())


@router.post("/evaluations/cached", tags=["evaluations"], responses=error_responses(401, 404, 422))
def find_cached_evaluation(
    body: CachedEvaluationIn, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    """Return the newest base-model evaluation with the same inputs, or null."""
    actor.require("reader")
    return {"evaluation": evaluations.find_cached_base_evaluation(session, body.model_dump())}


@router.get("/evaluations", tags=["evaluations"], responses=error_responses(401, 404, 422))
def list_evaluations(
    session: SessionDep,
    actor: ActorDep,
    subject: str | None = None,
    dataset: str | None = None,
    promotion_request_id: int | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """List evaluations, newest first; `subject` is an adapter name or name@version."""
    actor.require("reader")
    return {
        "items": evaluations.list_evaluations(
            session,
            subject=subject,
            dataset=dataset,
            promotion_request_id=promotion_request_id,
            limit=limit,
        )
    }


@router.get(
    "/evaluations/{evaluation_id}", tags=["evaluations"], responses=error_responses(401, 404)
)
def get_evaluation(evaluation_id: int, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    actor.require("reader")
    return evaluations.get_evaluation(session, evaluation_id)


# Merged models


@router.post(
    "/merged-models",
    status_code=201,
    tags=["merged-models"],
    responses=error_responses(401, 403, 404, 409, 422),
)
def register_merged_model(
    body: MergedModelIn, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    """Record a merged model with its parents, method, dtype, equivalence check and files."""
    return merges.register_merged_model(session, actor, body.model_dump())


@router.get("/merged-models", tags=["merged-models"], responses=error_responses(401))
def list_merged_models(session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    actor.require("reader")
    return {"items": merges.list_merged_models(session)}


@router.get("/merged-models/{name}", tags=["merged-models"], responses=error_responses(401, 404))
def get_merged_model(name: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    actor.require("reader")
    return merges.get_merged_model(session, name)


# Gate policies


@router.put("/gates/{adapter}/{alias}", tags=["gates"], responses=error_responses(401, 403, 422))
def set_gate(
    adapter: str, alias: str, body: GateIn, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    """Set the gate of an adapter and alias; '*' for either applies to every name."""
    return gates.set_gate_policy(session, actor, adapter=adapter, alias=alias, **body.model_dump())


@router.get("/gates", tags=["gates"], responses=error_responses(401))
def list_gates(session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    actor.require("reader")
    return {"items": gates.list_gate_policies(session)}


@router.get("/gates/{adapter}/{alias}", tags=["gates"], responses=error_responses(401, 422))
def get_gate(adapter: str, alias: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Return the policy a promotion of `adapter` to `alias` would be judged by."""
    actor.require("reader")
    return gates.get_gate_policy(session, adapter=adapter, alias=alias)


# Promotions


@router.post(
    "/promotions",
    status_code=201,
    tags=["promotions"],
    responses=error_responses(401, 403, 404, 409, 422),
)
def request_promotion(body: PromotionIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Open a promotion request; a worker evaluates it and the gate decides."""
    return promotions.request_promotion(
        session,
        actor,
        ref=body.ref,
        alias=body.alias,
        datasets=body.datasets,
        split=body.split,
        reason=body.reason,
    )


@router.get("/promotions", tags=["promotions"], responses=error_responses(401, 404, 422))
def list_promotions(
    session: SessionDep,
    actor: ActorDep,
    adapter: str | None = None,
    state: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    actor.require("reader")
    return {"items": promotions.list_promotions(session, adapter=adapter, state=state, limit=limit)}


@router.get("/promotions/{request_id}", tags=["promotions"], responses=error_responses(401, 404))
def get_promotion(request_id: int, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Show a request with its gate decision, evaluations and audit events."""
    actor.require("reader")
    return promotions.get_promotion(session, request_id)


@router.post("/promotions/claim", tags=["promotions"], responses=error_responses(401, 403, 422))
def claim_promotion(body: ClaimIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Claim the oldest claimable request for a worker; `request` is null when none waits."""
    return {
        "request": promotions.claim_promotion(
            session,
            actor,
            worker=body.worker,
            lease_seconds=body.lease_seconds,
            request_id=body.request_id,
        )
    }


@router.post(
    "/promotions/{request_id}/lease",
    tags=["promotions"],
    responses=error_responses(401, 403, 404, 409, 422),
)
def renew_lease(
    request_id: int, body: LeaseIn, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    """Extend the claiming worker's lease; 409 when another worker owns the request now."""
    return promotions.renew_lease(
        session, actor, request_id=request_id, worker=body.worker, lease_seconds=body.lease_seconds
    )


@router.post(
    "/promotions/{request_id}/results",
    tags=["promotions"],
    responses=error_responses(401, 403, 404, 409, 422),
)
def submit_results(
    request_id: int, body: ResultsIn, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    """Apply the gate to the worker's evaluations: reject, await approval, or promote."""
    return promotions.submit_results(
        session,
        actor,
        request_id=request_id,
        worker=body.worker,
        evaluation_ids=body.evaluation_ids,
    )


@router.post(
    "/promotions/{request_id}/fail",
    tags=["promotions"],
    responses=error_responses(401, 403, 404, 409, 422),
)
def fail_promotion(
    request_id: int, body: FailIn, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    """Report a worker error; the request is retried while attempts remain."""
    return promotions.fail_promotion(
        session,
        actor,
        request_id=request_id,
        worker=body.worker,
        error=body.error,
        retry=body.retry,
    )


@router.post(
    "/promotions/{request_id}/approve",
    tags=["promotions"],
    responses=error_responses(401, 403, 404, 409),
)
def approve_promotion(
    request_id: int, body: ApproveIn, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    """Approve a request awaiting approval (an approver other than the requester)."""
    return promotions.approve_promotion(session, actor, request_id=request_id, reason=body.reason)


@router.post(
    "/promotions/{request_id}/reject",
    tags=["promotions"],
    responses=error_responses(401, 403, 404, 409, 422),
)
def reject_promotion(
    request_id: int, body: RejectIn, session: SessionDep, actor: ActorDep
) -> dict[str, Any]:
    return promotions.reject_promotion(session, actor, request_id=request_id, reason=body.reason)


# Webhooks


@router.get("/webhooks/events", tags=["webhooks"], responses=error_responses(401, 403, 422))
def list_outbox_events(
    session: SessionDep, actor: ActorDep, after_id: int = 0, limit: int = 100
) -> dict[str, Any]:
    """List outbox events (alias moves, promotion transitions), oldest first."""
    actor.require("reader")
    return {"items": webhooks.list_events(session, after_id=after_id, limit=limit)}


@router.get("/webhooks/deliveries", tags=["webhooks"], responses=error_responses(401, 403, 422))
def list_deliveries(
    session: SessionDep,
    actor: ActorDep,
    event_id: int | None = None,
    state: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """List webhook deliveries, newest first; admins only, as URLs may embed secrets."""
    actor.require("admin")
    return {"items": webhooks.list_deliveries(session, event_id=event_id, state=state, limit=limit)}


@router.get(
    "/webhooks/deliveries/{delivery_id}",
    tags=["webhooks"],
    responses=error_responses(401, 403, 404),
)
def get_delivery(delivery_id: int, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Show one delivery with the log of every attempt."""
    actor.require("admin")
    return webhooks.get_delivery(session, delivery_id)
