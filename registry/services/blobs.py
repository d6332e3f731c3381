"""Content-addressed blobs: which are missing, uploads (whole or in parts), downloads."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db.base import utcnow
from registry.db.dialect import insert_ignore, lock_blob_digest
from registry.db.models import Blob, UploadSession
from registry.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from registry.services.actors import Actor
from registry.services.audit import record_event
from registry.services.uow import UnitOfWork
from registry.storage.base import BlobStore, PartInfo, check_digest, check_upload_id

log = logging.getLogger(__name__)

# Most digests one "which are missing" request may ask about.
MAX_DIGESTS_PER_QUERY = 1000
# S3 allows at most 10,000 parts per multipart upload.
MAX_PARTS = 10_000
# Chunk size of blob downloads: each chunk costs one worker-thread hop in the
# response, so small chunks cap the throughput.
DOWNLOAD_CHUNK_BYTES = 4 * 1024 * 1024


def find_missing_blobs(session: Session, store: BlobStore, digests: list[str]) -> list[str]:
    """Return the digests, in request order, that the registry does not hold.

    A digest is missing when no blob row records it, or when its row exists but
    the store has no object for it (lost, or moved aside by fsck as damaged),
    so that the client uploads it again.
    """
    if len(digests) > MAX_DIGESTS_PER_QUERY:
        raise InvalidInput(
            f"asked about {len(digests)} digests; ask about at most {MAX_DIGESTS_PER_QUERY} at once"
        )
    for digest in digests:
        check_digest(digest)
    recorded = set(session.scalars(select(Blob.digest).where(Blob.digest.in_(digests))))
    missing = []
    # NOTE: one store lookup (an S3 HEAD request) per recorded digest.
    for digest in dict.fromkeys(digests):
        if digest not in recorded:
            missing.append(digest)
        elif not store.has_blob(digest):
            log.warning("blob %s has a row but no stored object; reporting it missing", digest)
            missing.append(digest)
    return missing


def store_blob(
    uow: UnitOfWork,
    store: BlobStore,
    actor: Actor,
    *,
    digest: str,
    chunks: Iterable[bytes],
    declared_size: int | None,
    max_bytes: int,
) -> dict[str, Any]:
    """Stream a whole blob into the store, verified against ``digest``, and record it."""
    actor.require("writer")
    check_digest(digest)
    _check_declared_size(digest, declared_size, max_bytes)
    size = _put_and_record(uow, store, actor, digest=digest, chunks=chunks, max_bytes=max_bytes)
    if declared_size is not None and size != declared_size:
        raise InvalidInput(
            f"blob {digest} declared {declared_size} bytes but {size} arrived; send it again"
        )
    return {"digest": digest, "size": size}


def _put_and_record(
    uow: UnitOfWork,
    store: BlobStore,
    actor: Actor,
    *,
    digest: str,
    chunks: Iterable[bytes],
    max_bytes: int,
) -> int:
    size = store.put_blob(digest, chunks, max_bytes=max_bytes)
    try:
        with uow() as session:
            _record_blob(session, store, actor, digest=digest, size=size)
    except _ObjectRemoved:
        # put_blob found the object already stored and left the body unread, then gc
        # removed that object: store the body now.
        log.warning("blob %s was garbage collected during its upload; storing it again", digest)
        size = store.put_blob(digest, chunks, max_bytes=max_bytes)
        with uow() as session:
            _record_blob(session, store, actor, digest=digest, size=size)
    return size


def _check_declared_size(digest: str, size: int | None, max_bytes: int) -> None:
    if size is None:
        return
    if size < 0:
        raise InvalidInput(f"invalid size {size} for blob {digest}: sizes are >= 0")
    if size > max_bytes:
        raise PayloadTooLarge(
            f"blob {digest} is {size} bytes; this registry accepts at most {max_bytes} bytes "
            "per file (ADAPTERREG_MAX_BLOB_BYTES)"
        )


class _ObjectRemoved(Exception):
    """The stored object of a blob vanished between storing it and recording its row."""


def _record_blob(
    session: Session, store: BlobStore, actor: Actor, *, digest: str, size: int
) -> None:
    # gc deletes an object that has no row while holding the same lock, so the
    # object cannot vanish between this check and the insert.
    lock_blob_digest(session, digest)
    if not store.has_blob(digest):
        raise _ObjectRemoved(digest)
    inserted = insert_ignore(
        session,
        Blob.__table__,  # type: ignore[arg-type]
        {"digest": digest, "size": size, "created_at": utcnow()},
        conflict_columns=["digest"],
    )
    if inserted:
        record_event(
            session,
            actor,
            "blob.stored",
            entity_type="blob",
            entity_id=digest,
            details={"size": size},
        )


def start_upload(
    uow: UnitOfWork,
    store: BlobStore,
    actor: Actor,
    *,
    digest: str,
    size: int,
    part_size: int,
    max_bytes: int,
) -> dict[str, Any]:
    """Open a resumable upload of one blob; the response gives the part size and count."""
    actor.require("writer")
    check_digest(digest)
    _check_declared_size(digest, size, max_bytes)
    part_count = max(1, -(-size // part_size))
    if part_count > MAX_PARTS:
        raise InvalidInput(
            f"blob {digest} of {size} bytes needs {part_count} parts of {part_size} bytes; "
            f"the limit is {MAX_PARTS} parts"
        )
    upload_id = uuid.uuid4().hex
    handle = store.start_upload(upload_id)
    with uow() as session:
        session.add(
            UploadSession(
                id=upload_id,
                digest=digest,
                size=size,
                part_size=part_size,
                backend_handle=handle,
                parts={},
                created_by=actor.name,
            )
        )
    log.info("upload %s started for %s (%d bytes) by %s", upload_id, digest, size, actor.name)
    return _upload_dict(upload_id, digest=digest, size=size, part_size=part_size, parts={})


def get_upload(session: Session, upload_id: str) -> dict[str, Any]:
    row = _get_upload_row(session, upload_id)
    return _upload_dict(
        row.id, digest=row.digest, size=row.size, part_size=row.part_size, parts=row.parts
    )


def _get_upload_row(session: Session, upload_id: str, *, lock: bool = False) -> UploadSession:
    check_upload_id(upload_id)
    # Parts of one upload may arrive in parallel: lock the row while updating its part map.
    row = session.get(UploadSession, upload_id, with_for_update=lock)
    if row is None:
        raise NotFound(
            f"upload {upload_id!r} not found; it was completed, aborted or garbage collected "
            "(start a new upload)"
        )
    return row


def _upload_dict(
    upload_id: str, *, digest: str, size: int, part_size: int, parts: dict[str, Any]
) -> dict[str, Any]:
    part_count = max(1, -(-size // part_size))
    return {
        "upload_id": upload_id,
        "digest": digest,
        "size": size,
        "part_size": part_size,
        "part_count": part_count,
        "received_parts": sorted(int(number) for number in parts),
    }


def upload_part(
    uow: UnitOfWork,
    store: BlobStore,
    actor: Actor,
    *,
    upload_id: str,
    part_number: int,
    chunks: Iterable[bytes],
) -> dict[str, Any]:
    """Stage one part of an upload; sending a part again replaces it."""
    actor.require("writer")
    with uow() as session:
        row = _get_upload_row(session, upload_id)
        handle, size, part_size = row.backend_handle, row.size, row.part_size
    part_count = max(1, -(-size // part_size))
    if not 1 <= part_number <= part_count:
        raise InvalidInput(
            f"part {part_number} is out of range for upload {upload_id}: "
            f"parts are numbered 1 to {part_count}"
        )
    expected = part_size if part_number < part_count else size - part_size * (part_count - 1)
    offset = part_size * (part_number - 1)
    info = store.put_part(upload_id, handle, part_number, chunks, max_bytes=expected, offset=offset)
    if info.size != expected:
        raise InvalidInput(
            f"part {part_number} of upload {upload_id} has {info.size} bytes, "
            f"expected {expected}; send the part again"
        )
    with uow() as session:
        row = _get_upload_row(session, upload_id, lock=True)
        parts = dict(row.parts)
        parts[str(part_number)] = {"size": info.size, "etag": info.etag}
        row.parts = parts
        row.updated_at = utcnow()
    return {"upload_id": upload_id, "part_number": part_number, "size": info.size}


def complete_upload(
    uow: UnitOfWork, store: BlobStore, actor: Actor, *, upload_id: str
) -> dict[str, Any]:
    """Assemble the parts, verify the digest, and record the blob."""
    actor.require("writer")
    with uow() as session:
        row = _get_upload_row(session, upload_id)
        digest, size, handle = row.digest, row.size, row.backend_handle
        parts = _parts_in_order(row)
    stored_size = store.complete_upload(upload_id, handle, parts, digest)
    if stored_size != size:
        raise Conflict(f"upload {upload_id} assembled {stored_size} bytes, expected {size}")
    try:
        with uow() as session:
            _record_blob(session, store, actor, digest=digest, size=size)
            _delete_upload_row(session, upload_id)
    except _ObjectRemoved:
        # The store found the blob present and dropped the parts, then gc removed it.
        with uow() as session:
            _delete_upload_row(session, upload_id)
        raise Conflict(
            f"blob {digest} was garbage collected while upload {upload_id} completed; "
            "upload the file again"
        ) from None
    log.info("upload %s completed: %s", upload_id, digest)
    return {"digest": digest, "size": size}


def _delete_upload_row(session: Session, upload_id: str) -> None:
    finished = session.get(UploadSession, upload_id)
    if finished is not None:
        session.delete(finished)


def _parts_in_order(row: UploadSession) -> list[PartInfo]:
    part_count = max(1, -(-row.size // row.part_size))
    missing = [n for n in range(1, part_count + 1) if str(n) not in row.parts]
    if missing:
        raise Conflict(
            f"upload {row.id} is missing parts {missing[:20]} of {part_count}; "
            "send them, then complete the upload"
        )
    return [
        PartInfo(part_number=n, size=p["size"], etag=p["etag"])
        for n, p in sorted((int(k), v) for k, v in row.parts.items())
    ]


def abort_upload(uow: UnitOfWork, store: BlobStore, actor: Actor, *, upload_id: str) -> None:
    actor.require("writer")
    with uow() as session:
        row = _get_upload_row(session, upload_id)
        handle = row.backend_handle
        session.delete(row)
    store.abort_upload(upload_id, handle)
    log.info("upload %s aborted by %s", upload_id, actor.name)


def open_blob(session: Session, store: BlobStore, digest: str) -> tuple[int, Iterator[bytes]]:
    """Return the size and a byte stream of a recorded blob."""
    check_digest(digest)
    row = session.get(Blob, digest)
    if row is None:
        raise NotFound(f"blob {digest} not found in this registry")
    return row.size, store.open_blob(digest, chunk_size=DOWNLOAD_CHUNK_BYTES)
