"""Garbage collection: unreferenced blobs, abandoned uploads and staged leftovers.

A blob is garbage when no adapter version, base model, dataset version or
merged model names its digest, no upload session is open for it, and its row
is older than the grace period. Deleting it takes two short transactions, so
that gc can neither race a commit nor leave a row without its object:

1. Lock the ``blobs`` row FOR UPDATE, check again that nothing references it,
   delete the row and commit. A commit or registration that checked the blob
   holds the row FOR SHARE (and ``version_files`` has a foreign key to it),
   so either it finished first and the reference is seen, or it waits for gc
   and then finds the blob missing (NotFound: upload it again).
2. Under the digest's lock (``lock_blob_digest``), delete the object only if
   no row came back meanwhile. Recording an uploaded blob checks the object
   under the same lock, so a re-upload of the same bytes is never lost.

A crash between the two steps leaves an object without a row, which the
next run deletes like any other unrecorded object older than the grace period.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, exists, select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from registry.db.base import utcnow
from registry.db.dialect import lock_blob_digest
from registry.db.models import (
    BaseModelRecord,
    Blob,
    DatasetVersion,
    MergedModel,
    UploadSession,
    VersionFile,
)
from registry.errors import InvalidInput
from registry.services.actors import Actor
from registry.services.audit import record_event
from registry.services.uow import UnitOfWork
from registry.storage.base import BlobStore

log = logging.getLogger(__name__)


@dataclass
class _Sweep:
    """Outcome of one gc run: what it deleted (or, in a dry run, would delete) and kept."""

    dry_run: bool
    cutoff: datetime
    deleted_blobs: list[dict[str, Any]] = field(default_factory=list)
    deleted_unrecorded_objects: list[str] = field(default_factory=list)
    aborted_uploads: list[str] = field(default_factory=list)
    removed_staged_uploads: list[str] = field(default_factory=list)
    kept_within_grace: int = 0

    def to_dict(self, grace_seconds: int) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "grace_seconds": grace_seconds,
            "cutoff": self.cutoff.isoformat(),
            "deleted_blobs": self.deleted_blobs,
            "deleted_bytes": sum(blob["size"] for blob in self.deleted_blobs),
            "deleted_unrecorded_objects": self.deleted_unrecorded_objects,
            "aborted_uploads": self.aborted_uploads,
            "removed_staged_uploads": self.removed_staged_uploads,
            "kept_within_grace": self.kept_within_grace,
        }


def collect_garbage(
    uow: UnitOfWork,
    store: BlobStore,
    actor: Actor,
    *,
    grace_seconds: int,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Delete unreferenced blobs and abandoned uploads older than ``grace_seconds``.

    Removes, in order: upload sessions idle longer than the grace period (with
    their staged parts), staged objects under ``uploads/`` that no session owns,
    unreferenced blob rows with their objects, and objects that have no row.
    With ``dry_run`` nothing is deleted and the report lists what would be.
    Needs role admin; raises InvalidInput for a negative grace period and
    StorageError when the store fails (running gc again is safe).
    """
    actor.require("admin")
    if grace_seconds < 0:
        raise InvalidInput(f"invalid grace period {grace_seconds} s: use 0 or more seconds")
    sweep = _Sweep(dry_run=dry_run, cutoff=utcnow() - timedelta(seconds=grace_seconds))
    log.info("gc started: grace %d s, dry run %s", grace_seconds, dry_run)
    _sweep_idle_uploads(uow, store, sweep)
    _sweep_staged_uploads(uow, store, sweep)
    _sweep_blob_rows(uow, store, sweep)
    _sweep_unrecorded_objects(uow, store, sweep)
    report = sweep.to_dict(grace_seconds)
    if not dry_run:
        with uow() as session:
            record_event(
                session,
                actor,
                "gc.completed",
                entity_type="blob_store",
                entity_id="blobs",
                details={key: _count(value) for key, value in report.items()},
            )
    log.info(
        "gc finished: %d blobs (%d bytes), %d unrecorded objects, %d idle uploads, "
        "%d staged leftovers%s",
        len(sweep.deleted_blobs),
        report["deleted_bytes"],
        len(sweep.deleted_unrecorded_objects),
        len(sweep.aborted_uploads),
        len(sweep.removed_staged_uploads),
        " (dry run, nothing deleted)" if dry_run else "",
    )
    return report


def _count(value: Any) -> Any:
    return len(value) if isinstance(value, list) else value


def _sweep_idle_uploads(uow: UnitOfWork, store: BlobStore, sweep: _Sweep) -> None:
    with uow() as session:
        idle = session.scalars(
            select(UploadSession.id).where(UploadSession.updated_at < sweep.cutoff)
        ).all()
    for upload_id in idle:
        if sweep.dry_run:
            sweep.aborted_uploads.append(upload_id)
            continue
        handle = _delete_idle_upload(uow, upload_id, sweep.cutoff)
        if handle is None:
            continue
        # After the commit: a crash here leaves staged parts without a session,
        # which the staged-upload sweep of the next run removes.
        store.abort_upload(upload_id, handle)
        sweep.aborted_uploads.append(upload_id)
        log.info("gc aborted upload %s, idle since before %s", upload_id, sweep.cutoff)


def _delete_idle_upload(uow: UnitOfWork, upload_id: str, cutoff: datetime) -> str | None:
    """Delete the session if it is still idle; return its backend handle, or None."""
    with uow() as session:
        row = session.get(UploadSession, upload_id, with_for_update=True)
        if row is None or row.updated_at >= cutoff:
            return None
        handle = row.backend_handle
        session.delete(row)
    return handle


def _sweep_staged_uploads(uow: UnitOfWork, store: BlobStore, sweep: _Sweep) -> None:
    for staged in store.iter_staged_uploads():
        if staged.modified_at >= sweep.cutoff:
            continue
        with uow() as session:
            owned = session.get(UploadSession, staged.upload_id) is not None
        if owned:
            continue
        if not sweep.dry_run:
            store.abort_upload(staged.upload_id, "")
            log.info("gc removed staged upload %s without a session", staged.upload_id)
        sweep.removed_staged_uploads.append(staged.upload_id)


def _sweep_blob_rows(uow: UnitOfWork, store: BlobStore, sweep: _Sweep) -> None:
    with uow() as session:
        candidates = session.execute(
            select(Blob.digest, Blob.size, Blob.created_at).where(_unreferenced(Blob.digest))
        ).all()
    for digest, size, created_at in candidates:
        if created_at >= sweep.cutoff:
            sweep.kept_within_grace += 1
            continue
        if sweep.dry_run:
            if not _has_json_reference(uow, digest):
                sweep.deleted_blobs.append({"digest": digest, "size": size})
            continue
        if _delete_blob_row(uow, digest, sweep.cutoff):
            _delete_object_without_row(uow, store, digest)
            sweep.deleted_blobs.append({"digest": digest, "size": size})
            log.info("gc deleted blob %s (%d bytes)", digest, size)


def _unreferenced(digest: Any) -> Any:
    """SQL condition: no version file or open upload session names ``digest``."""
    return ~exists().where(VersionFile.digest == digest) & ~exists().where(
        UploadSession.digest == digest
    )


def _has_json_reference(uow: UnitOfWork, digest: str) -> bool:
    with uow() as session:
        return _is_named_in_json(session, digest)


def _is_named_in_json(session: Session, digest: str) -> bool:
    """Return whether a base model, dataset version or merged model names ``digest``.

    Base models count even when registered without uploading their files: the
    same bytes may be stored for another reason, and keeping them is harmless.
    """
    queries = (
        select(DatasetVersion.id).where(DatasetVersion.digest == digest),
        # Digests are hex, so they contain no LIKE wildcards.
        select(BaseModelRecord.id).where(cast(BaseModelRecord.files, String).contains(digest)),
        select(MergedModel.id).where(cast(MergedModel.files, String).contains(digest)),
    )
    return any(session.scalar(query.limit(1)) is not None for query in queries)


def _delete_blob_row(uow: UnitOfWork, digest: str, cutoff: datetime) -> bool:
    """Delete the row of an unreferenced blob older than ``cutoff``; return whether it was."""
    try:
        with uow() as session:
            row = session.scalar(select(Blob).where(Blob.digest == digest).with_for_update())
            if row is None or row.created_at >= cutoff:
                return False
            still_free = session.scalar(select(_unreferenced(digest)))
            if not still_free or _is_named_in_json(session, digest):
                return False
            session.delete(row)
            session.flush()
    except DBIntegrityError:
        # The foreign key of version_files caught a reference the checks above missed.
        log.warning("gc kept blob %s: a version started referencing it", digest)
        return False
    return True


def _delete_object_without_row(uow: UnitOfWork, store: BlobStore, digest: str) -> bool:
    """Delete the stored object of ``digest`` unless a row or an open upload needs it."""
    with uow() as session:
        lock_blob_digest(session, digest)
        if session.get(Blob, digest) is not None:
            return False
        uploading = session.scalar(
            select(UploadSession.id).where(UploadSession.digest == digest).limit(1)
        )
        if uploading is not None:
            return False
        store.delete_blob(digest)
    return True


def _sweep_unrecorded_objects(uow: UnitOfWork, store: BlobStore, sweep: _Sweep) -> None:
    """Delete old objects that have no row: uploads cut off before their row was written."""
    with uow() as session:
        recorded = set(session.scalars(select(Blob.digest)))
    for info in store.iter_blobs():
        if info.digest in recorded or info.modified_at >= sweep.cutoff:
            continue
        if sweep.dry_run or _delete_object_without_row(uow, store, info.digest):
            sweep.deleted_unrecorded_objects.append(info.digest)
            log.info("gc deleted object %s, which had no blob row", info.digest)
