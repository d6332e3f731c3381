"""Integrity check of the blob store against the database.

Every blob the database records is read back and hashed. A blob is damaged
when its bytes no longer hash to its digest or its size changed, and missing
when the store has no object for it. Digests that an uploaded base model,
dataset version or merged model names without any ``blobs`` row are missing
too. Each problem lists what references the blob, so the operator knows which
versions to push again.

A damaged object is moved to a quarantine key (kept for inspection, never
served), so the blob becomes missing. ``POST /blobs/missing`` reports a digest
whose object is missing, so pushing any version that contains the file
uploads it again and repairs every version that references it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db.models import (
    Adapter,
    AdapterVersion,
    BaseModelRecord,
    Blob,
    DatasetVersion,
    MergedModel,
    VersionFile,
)
from registry.errors import NotFound, StorageError
from registry.services.actors import Actor
from registry.services.uow import UnitOfWork
from registry.storage.base import BlobStore

log = logging.getLogger(__name__)


def check_integrity(uow: UnitOfWork, store: BlobStore, actor: Actor) -> dict[str, Any]:
    """Hash every recorded blob, move damaged objects aside, and report the problems.

    The report's ``ok`` is False when any problem was found. A damaged problem
    carries ``quarantined_to``, the location its object was moved to (None if
    that failed). Needs role admin, because it moves objects; raises
    StorageError when the store cannot be listed or read.
    """
    actor.require("admin")
    # Short transactions only: a SQLite transaction holds the write lock while open.
    with uow() as session:
        recorded = session.execute(select(Blob.digest, Blob.size).order_by(Blob.digest)).all()
        references = _collect_references(session)
    problems: list[dict[str, Any]] = []
    bytes_read = 0
    for digest, size in recorded:
        problem, read = _check_blob(store, digest, size)
        bytes_read += read
        if problem is not None:
            if problem["problem"] == "damaged":
                _quarantine(store, problem)
            problems.append(problem)
    recorded_digests = {digest for digest, _ in recorded}
    for digest, uses in sorted(references.items()):
        if digest not in recorded_digests and any(use["uploaded"] for use in uses):
            problems.append(_problem(digest, "missing", "no blob row records this digest"))
    for problem in problems:
        problem["referenced_by"] = [_public(use) for use in references.get(problem["digest"], [])]
        log.error(
            "fsck: blob %s is %s: %s", problem["digest"], problem["problem"], problem["detail"]
        )
    log.info(
        "fsck checked %d blobs (%d bytes): %d problems", len(recorded), bytes_read, len(problems)
    )
    return {
        "ok": not problems,
        "checked": len(recorded),
        "bytes_read": bytes_read,
        "problems": problems,
    }


def _check_blob(store: BlobStore, digest: str, size: int) -> tuple[dict[str, Any] | None, int]:
    """Hash one stored blob; return the problem found (or None) and the bytes read."""
    sha256 = hashlib.sha256()
    read = 0
    try:
        for chunk in store.open_blob(digest):
            sha256.update(chunk)
            read += len(chunk)
    except NotFound:
        return _problem(digest, "missing", "the store has no object for it"), read
    found = f"sha256:{sha256.hexdigest()}"
    if found != digest or read != size:
        detail = f"stored bytes hash to {found} ({read} bytes); recorded size is {size} bytes"
        return {
            **_problem(digest, "damaged", detail),
            "found_digest": found,
            "found_size": read,
            "recorded_size": size,
        }, read
    return None, read


def _quarantine(store: BlobStore, problem: dict[str, Any]) -> None:
    """Move a damaged object aside and record where it went in ``problem``."""
    digest = problem["digest"]
    try:
        problem["quarantined_to"] = store.quarantine_blob(digest)
    except NotFound:
        # Removed since it was hashed (by gc, or another fsck): nothing is served for it.
        problem["quarantined_to"] = None
    except StorageError as e:
        log.error("fsck: moving damaged blob %s aside failed: %s", digest, e.detail)
        problem["quarantined_to"] = None
        problem["detail"] += f"; moving it aside failed ({e.detail})"


def _problem(digest: str, kind: str, detail: str) -> dict[str, Any]:
    return {"digest": digest, "problem": kind, "detail": detail}


def _public(use: dict[str, Any]) -> dict[str, str]:
    return {key: use[key] for key in ("kind", "name", "path")}


def _collect_references(session: Session) -> dict[str, list[dict[str, Any]]]:
    """Map each digest to its uses; ``uploaded`` tells whether the registry must store it."""
    uses: dict[str, list[dict[str, Any]]] = defaultdict(list)
    _add_version_file_uses(session, uses)
    for kind, model in (("base_model", BaseModelRecord), ("merged_model", MergedModel)):
        for name, files, uploaded in session.execute(
            select(model.name, model.files, model.uploaded)
        ):
            for entry in files:
                uses[entry["digest"]].append(_use(kind, name, entry["path"], uploaded=uploaded))
    datasets = select(
        DatasetVersion.name, DatasetVersion.version, DatasetVersion.digest, DatasetVersion.uploaded
    )
    for name, label, digest, uploaded in session.execute(datasets):
        uses[digest].append(_use("dataset", f"{name}@{label}", "", uploaded=uploaded))
    return uses


def _add_version_file_uses(session: Session, uses: dict[str, list[dict[str, Any]]]) -> None:
    version_files = session.execute(
        select(VersionFile.digest, VersionFile.path, Adapter.name, AdapterVersion.version)
        .join(AdapterVersion, AdapterVersion.id == VersionFile.version_id)
        .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
    )
    for digest, path, name, number in version_files:
        uses[digest].append(_use("adapter_version", f"{name}@{number}", path, uploaded=True))


def _use(kind: str, name: str, path: str, *, uploaded: bool) -> dict[str, Any]:
    return {"kind": kind, "name": name, "path": path, "uploaded": uploaded}
