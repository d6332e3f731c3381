"""Base models: the frozen foundations every adapter is pinned to."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.base_manifest import FileEntry, compute_fingerprint
from registry.db.models import BaseModelRecord, Blob
from registry.errors import Conflict, InvalidInput, NotFound
from registry.services.actors import Actor
from registry.services.audit import record_event
from registry.services.files import check_file_entries
from registry.services.names import check_name

log = logging.getLogger(__name__)

# Most tensors a base model manifest may list (a 400B-parameter model has ~10^4).
MAX_MANIFEST_ENTRIES = 200_000


def register_base_model(session: Session, actor: Actor, spec: dict[str, Any]) -> dict[str, Any]:
    """Record a base model; registering identical content again returns the existing record.

    Raises InvalidInput for a malformed spec, NotFound for a declared upload whose blobs
    are missing, Conflict when the name is taken by different content.
    """
    actor.require("writer")
    name = check_name(spec.get("name", ""), what="base model name")
    files = check_file_entries(spec.get("files"), what=f"base model {name!r}")
    manifest = _check_manifest(spec.get("manifest"), name)
    fingerprint = compute_fingerprint(files)
    declared = spec.get("fingerprint")
    if declared is not None and declared != fingerprint:
        raise InvalidInput(
            f"base model {name!r} declares fingerprint {declared!r} but its file digests give "
            f"{fingerprint!r}; recompute it from the files"
        )
    uploaded = bool(spec.get("uploaded", False))
    if uploaded:
        _check_blobs_present(session, files, name)

    existing = session.scalar(select(BaseModelRecord).where(BaseModelRecord.name == name))
    if existing is not None:
        return _existing_or_conflict(existing, fingerprint, spec.get("revision"))

    row = BaseModelRecord(
        name=name,
        source_uri=str(spec.get("source_uri") or ""),
        revision=spec.get("revision"),
        architecture=str(spec.get("architecture") or "unknown"),
        fingerprint=fingerprint,
        config=_check_object(spec.get("config", {}), f"config of base model {name!r}"),
        manifest=manifest,
        files=[entry.to_dict() for entry in files],
        uploaded=uploaded,
        created_by=actor.name,
    )
    session.add(row)
    session.flush()
    record_event(
        session,
        actor,
        "base_model.registered",
        entity_type="base_model",
        entity_id=name,
        details={"fingerprint": fingerprint, "revision": row.revision, "uploaded": uploaded},
    )
    return base_model_dict(row)


def _existing_or_conflict(
    existing: BaseModelRecord, fingerprint: str, revision: str | None
) -> dict[str, Any]:
    if existing.fingerprint == fingerprint and (revision is None or revision == existing.revision):
        return base_model_dict(existing, created=False)
    raise Conflict(
        f"base model {existing.name!r} is already registered with fingerprint "
        f"{existing.fingerprint} (revision {existing.revision!r}); these files give "
        f"{fingerprint} (revision {revision!r}). Register them under a new name"
    )


def _check_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _check_manifest(manifest: Any, name: str) -> dict[str, Any]:
    manifest = _check_object(manifest, f"manifest of base model {name!r}")
    if len(manifest) > MAX_MANIFEST_ENTRIES:
        raise InvalidInput(
            f"manifest of base model {name!r} lists {len(manifest)} tensors; "
            f"the limit is {MAX_MANIFEST_ENTRIES}"
        )
    for key, entry in manifest.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (
            not isinstance(shape, list)
            or not all(isinstance(n, int) and n >= 0 for n in shape)
            or not isinstance(entry.get("dtype"), str)
        ):
            raise InvalidInput(
                f"manifest entry {key!r} of base model {name!r} must be "
                f'{{"shape": [non-negative ints], "dtype": str}}, got {entry!r}'
            )
    return manifest


def _check_blobs_present(session: Session, files: list[FileEntry], name: str) -> None:
    digests = [entry.digest for entry in files]
    # FOR SHARE keeps gc from deleting these rows until the registration commits.
    query = select(Blob.digest).where(Blob.digest.in_(digests)).with_for_update(read=True)
    present = set(session.scalars(query))
    missing = [entry.path for entry in files if entry.digest not in present]
    if missing:
        raise NotFound(
            f"base model {name!r} declares uploaded files whose blobs are missing: "
            f"{missing[:10]}; upload them first"
        )


def get_base_model_row(session: Session, name: str) -> BaseModelRecord:
    row = session.scalar(select(BaseModelRecord).where(BaseModelRecord.name == name))
    if row is None:
        raise NotFound(
            f"base model {name!r} not found; register it with "
            "`adapterreg base-model register NAME --path DIR`"
        )
    return row


def get_base_model(session: Session, name: str) -> dict[str, Any]:
    return base_model_dict(get_base_model_row(session, name))


def list_base_models(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(select(BaseModelRecord).order_by(BaseModelRecord.name))
    return [base_model_dict(row, with_manifest=False) for row in rows]


def base_model_dict(
    row: BaseModelRecord, *, created: bool = True, with_manifest: bool = True
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": row.name,
        "source_uri": row.source_uri,
        "revision": row.revision,
        "architecture": row.architecture,
        "fingerprint": row.fingerprint,
        "files": row.files,
        "uploaded": row.uploaded,
        "tensor_count": len(row.manifest),
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "created": created,
    }
    if with_manifest:
        result["config"] = row.config
        result["manifest"] = row.manifest
    return result
