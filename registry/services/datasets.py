"""Dataset versions: the data an adapter was trained or evaluated on, pinned by digest."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from registry.db.models import Blob, DatasetVersion
from registry.errors import Conflict, InvalidInput, NotFound
from registry.services.actors import Actor
from registry.services.audit import record_event
from registry.services.names import check_name
from registry.storage.base import check_digest

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")
# Attempts at the next free version number when two registrations race for it.
VERSION_RETRIES = 5


def register_dataset(session: Session, actor: Actor, spec: dict[str, Any]) -> dict[str, Any]:
    """Record a dataset version; the same name, version and digest again is a no-op.

    Without a version, the next integer version of the dataset is assigned.
    Raises InvalidInput, NotFound (declared upload missing) or Conflict (the
    version exists with other content).
    """
    actor.require("writer")
    fields = _check_spec(spec)
    if fields["uploaded"]:
        _check_blob(session, fields["digest"], fields["size"], fields["name"])
    if spec.get("version") is not None:
        version = check_name(str(spec["version"]), what="dataset version")
        return _insert_version(session, actor, fields, version)
    for attempt in range(1, VERSION_RETRIES + 1):
        same = _find_same_digest(session, fields["name"], fields["digest"])
        if same is not None:
            return dataset_dict(same, created=False)
        version = str(_max_numeric_version(session, fields["name"]) + 1)
        try:
            with session.begin_nested():
                return _insert_version(session, actor, fields, version)
        except DBIntegrityError:
            log.warning(
                "dataset %s version %s was taken concurrently (attempt %d of %d)",
                fields["name"],
                version,
                attempt,
                VERSION_RETRIES,
            )
    raise Conflict(
        f"could not assign a version to dataset {fields['name']!r} after {VERSION_RETRIES} "
        "attempts under concurrent registrations; retry"
    )


def _check_spec(spec: dict[str, Any]) -> dict[str, Any]:
    name = check_name(spec.get("name", ""), what="dataset name")
    fmt = spec.get("format")
    if fmt not in FORMATS:
        raise InvalidInput(f"dataset {name!r} has format {fmt!r}; supported: {', '.join(FORMATS)}")
    row_count = spec.get("row_count")
    if not isinstance(row_count, int) or row_count < 0:
        raise InvalidInput(f"dataset {name!r} has invalid row_count {row_count!r}")
    size = spec.get("size")
    if not isinstance(size, int) or size < 0:
        raise InvalidInput(f"dataset {name!r} has invalid size {size!r}")
    columns = spec.get("columns")
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InvalidInput(f"dataset {name!r}: columns must be a list of strings")
    splits = spec.get("splits") or {}
    if not isinstance(splits, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in splits.items()
    ):
        raise InvalidInput(f"dataset {name!r}: splits must map split names to row counts")
    label_set = spec.get("label_set")
    if label_set is not None and not isinstance(label_set, list):
        raise InvalidInput(f"dataset {name!r}: label_set must be a list or null")
    return {
        "name": name,
        "uri": str(spec.get("uri") or ""),
        "digest": check_digest(spec.get("digest", "")),
        "size": size,
        "format": fmt,
        "row_count": row_count,
        "columns": columns,
        "label_set": label_set,
        "splits": splits,
        "uploaded": bool(spec.get("uploaded", False)),
    }


def _check_blob(session: Session, digest: str, size: int, name: str) -> None:
    # FOR SHARE keeps gc from deleting the row until the registration commits.
    blob = session.scalar(select(Blob).where(Blob.digest == digest).with_for_update(read=True))
    if blob is None:
        raise NotFound(f"dataset {name!r} declares an uploaded file {digest} that is missing")
    if blob.size != size:
        raise InvalidInput(
            f"dataset {name!r} declares {size} bytes but blob {digest} has {blob.size}"
        )


def _find_same_digest(session: Session, name: str, digest: str) -> DatasetVersion | None:
    return session.scalar(
        select(DatasetVersion)
        .where(DatasetVersion.name == name, DatasetVersion.digest == digest)
        .order_by(DatasetVersion.id)
        .limit(1)
    )


def _max_numeric_version(session: Session, name: str) -> int:
    versions = session.scalars(select(DatasetVersion.version).where(DatasetVersion.name == name))
    return max((int(v) for v in versions if v.isdigit()), default=0)


def _insert_version(
    session: Session, actor: Actor, fields: dict[str, Any], version: str
) -> dict[str, Any]:
    existing = session.scalar(
        select(DatasetVersion).where(
            DatasetVersion.name == fields["name"], DatasetVersion.version == version
        )
    )
    if existing is not None:
        if existing.digest == fields["digest"]:
            return dataset_dict(existing, created=False)
        raise Conflict(
            f"dataset {fields['name']}@{version} already exists with digest {existing.digest}; "
            f"this file has {fields['digest']}. Register it as a new version"
        )
    row = DatasetVersion(version=version, created_by=actor.name, **fields)
    session.add(row)
    session.flush()
    record_event(
        session,
        actor,
        "dataset.registered",
        entity_type="dataset",
        entity_id=f"{row.name}@{row.version}",
        details={"digest": row.digest},
    )
    return dataset_dict(row)


def get_dataset_row(session: Session, name: str, version: str) -> DatasetVersion:
    row = session.scalar(
        select(DatasetVersion).where(DatasetVersion.name == name, DatasetVersion.version == version)
    )
    if row is None:
        known = session.scalars(
            select(DatasetVersion.version).where(DatasetVersion.name == name)
        ).all()
        hint = f"known versions: {', '.join(known)}" if known else "no versions are registered"
        raise NotFound(f"dataset {name}@{version} not found ({hint})")
    return row


def get_dataset(session: Session, name: str, version: str) -> dict[str, Any]:
    return dataset_dict(get_dataset_row(session, name, version))


def list_datasets(session: Session, *, name: str | None = None) -> list[dict[str, Any]]:
    query = select(DatasetVersion).order_by(DatasetVersion.name, DatasetVersion.id)
    if name:
        query = query.where(DatasetVersion.name == name)
    return [dataset_dict(row) for row in session.scalars(query)]


def dataset_dict(row: DatasetVersion, *, created: bool = True) -> dict[str, Any]:
    return {
        "name": row.name,
        "version": row.version,
        "uri": row.uri,
        "digest": row.digest,
        "sha256": row.digest.removeprefix("sha256:"),
        "size": row.size,
        "format": row.format,
        "row_count": row.row_count,
        "columns": row.columns,
        "label_set": row.label_set,
        "splits": row.splits,
        "uploaded": row.uploaded,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "created": created,
    }
