"""Blob transfer: which are missing, whole uploads, resumable uploads, downloads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from registry.api.deps import ActorDep, SessionDep, StateDep, StoreDep, UowDep
from registry.api.errors import error_responses
from registry.api.routing import RegistryRoute
from registry.api.schemas import MissingBlobsIn, UploadIn
from registry.api.streaming import run_with_body
from registry.services import blobs

router = APIRouter(tags=["blobs"], route_class=RegistryRoute)


@router.post("/blobs/missing", responses=error_responses(401, 403, 422))
def find_missing(
    body: MissingBlobsIn, session: SessionDep, store: StoreDep, actor: ActorDep
) -> dict[str, Any]:
    """Return which of the digests the registry does not hold, as a row or as stored bytes."""
    actor.require("reader")
    return {"missing": blobs.find_missing_blobs(session, store, body.digests)}


@router.put("/blobs/{digest}", status_code=201, responses=error_responses(401, 403, 413, 422, 503))
async def put_blob(
    digest: str, request: Request, uow: UowDep, store: StoreDep, actor: ActorDep, state: StateDep
) -> dict[str, Any]:
    """Upload a whole blob; the body's sha256 must equal the digest in the path."""
    length = request.headers.get("content-length")
    declared = int(length) if length and length.isdigit() else None
    return await run_with_body(
        request,
        lambda chunks: blobs.store_blob(
            uow,
            store,
            actor,
            digest=digest,
            chunks=chunks,
            declared_size=declared,
            max_bytes=state.settings.max_blob_bytes,
        ),
    )


@router.get("/blobs/{digest}", responses=error_responses(401, 404, 422, 503))
def get_blob(digest: str, session: SessionDep, store: StoreDep, actor: ActorDep) -> Response:
    """Download a blob. Clients verify its sha256 against the digest."""
    actor.require("reader")
    size, chunks = blobs.open_blob(session, store, digest)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={"Content-Length": str(size), "Docker-Content-Digest": digest},
    )


@router.post("/uploads", status_code=201, responses=error_responses(401, 403, 413, 422))
def start_upload(
    body: UploadIn, uow: UowDep, store: StoreDep, actor: ActorDep, state: StateDep
) -> dict[str, Any]:
    """Open a resumable upload; send parts of `part_size` bytes, then complete it."""
    return blobs.start_upload(
        uow,
        store,
        actor,
        digest=body.digest,
        size=body.size,
        part_size=state.settings.part_size,
        max_bytes=state.settings.max_blob_bytes,
    )


@router.get("/uploads/{upload_id}", responses=error_responses(401, 404, 422))
def get_upload(upload_id: str, session: SessionDep, actor: ActorDep) -> dict[str, Any]:
    """Return an upload's state, including the parts received, to resume it."""
    actor.require("writer")
    return blobs.get_upload(session, upload_id)


@router.put(
    "/uploads/{upload_id}/parts/{part_number}",
    responses=error_responses(401, 403, 404, 413, 422, 503),
)
async def put_part(
    upload_id: str,
    part_number: int,
    request: Request,
    uow: UowDep,
    store: StoreDep,
    actor: ActorDep,
) -> dict[str, Any]:
    """Upload one part; sending a part again replaces it."""
    return await run_with_body(
        request,
        lambda chunks: blobs.upload_part(
            uow, store, actor, upload_id=upload_id, part_number=part_number, chunks=chunks
        ),
    )


@router.post(
    "/uploads/{upload_id}/complete", responses=error_responses(401, 403, 404, 409, 422, 503)
)
def complete_upload(
    upload_id: str, uow: UowDep, store: StoreDep, actor: ActorDep
) -> dict[str, Any]:
    """Assemble the parts, verify the sha256 and record the blob."""
    return blobs.complete_upload(uow, store, actor, upload_id=upload_id)


@router.delete("/uploads/{upload_id}", status_code=204, responses=error_responses(401, 403, 404))
def abort_upload(upload_id: str, uow: UowDep, store: StoreDep, actor: ActorDep) -> Response:
    blobs.abort_upload(uow, store, actor, upload_id=upload_id)
    return Response(status_code=204)
