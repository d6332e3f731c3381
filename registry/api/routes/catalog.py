"""Base models and datasets."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from registry.api.deps import ActorDep, SessionDep
from registry.api.errors import error_responses
from registry.api.routing import RegistryRoute
from registry.api.schemas import BaseModelIn, DatasetIn
from registry.services import base_models, datasets

router = APIRouter(route_class=RegistryRoute)


@router.post(
    "/base-models",
    status_code=201,
    tags=["base-models"],
    responses=error_responses(401, 403, 404, 409, 422),
)
def register_base_model(body: BaseModelIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Record a base model with its fingerprint and module manifest."""
    return base_models.register_base_model(session, actor, body.model_dump())


@router.get("/base-models", tags=["base-models"], responses=error_responses(401))
def list_base_models(session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    actor.require("reader")
    return {"items": base_models.list_base_models(session)}


@router.get("/base-models/{name}", tags=["base-models"], responses=error_responses(401, 404, 422))
def get_base_model(name: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    actor.require("reader")
    return base_models.get_base_model(session, name)


@router.post(
    "/datasets",
    status_code=201,
    tags=["datasets"],
    responses=error_responses(401, 403, 404, 409, 422),
)
def register_dataset(body: DatasetIn, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Record a dataset version with its sha256, row count, columns and labels."""
    return datasets.register_dataset(session, actor, body.model_dump())


@router.get("/datasets", tags=["datasets"], responses=error_responses(401))
def list_datasets(session: SessionDep, actor: ActorDep, name: str | None = None) -> dict[str, Any]:
    actor.require("reader")
    return {"items": datasets.list_datasets(session, name=name)}


@router.get(
    "/datasets/{name}/{version}", tags=["datasets"], responses=error_responses(401, 404, 422)
)
def get_dataset(name: str, version: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    actor.require("reader")
    return datasets.get_dataset(session, name, version)
