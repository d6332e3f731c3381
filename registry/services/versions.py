"""Reading adapter versions: references, details and lineage."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from registry.db.models import (
    Adapter,
    AdapterVersion,
    Alias,
    BaseModelRecord,
    DatasetVersion,
    TrainingRun,
    VersionDataset,
    VersionParent,
)
from registry.errors import NotFound
from registry.services.names import Reference, check_name, parse_reference
from registry.services.runs import run_dict

# Deepest lineage walked from one version (merges of merges of ...).
MAX_LINEAGE_DEPTH = 32


def get_adapter_row(session: Session, name: str) -> Adapter:
    row = session.scalar(select(Adapter).where(Adapter.name == check_name(name, what="adapter")))
    if row is None:
        raise NotFound(f"adapter {name!r} not found; push a version with `adapterreg push`")
    return row


def find_version_row(
    session: Session, *, adapter_id: int, manifest_digest: str
) -> AdapterVersion | None:
    return session.scalar(
        select(AdapterVersion).where(
            AdapterVersion.adapter_id == adapter_id,
            AdapterVersion.manifest_digest == manifest_digest,
        )
    )


def get_version_row(session: Session, ref: Reference | str) -> AdapterVersion:
    """Resolve ``name``, ``name@3`` or ``name@alias`` to a version; NotFound if absent."""
    if isinstance(ref, str):
        ref = parse_reference(ref)
    adapter = get_adapter_row(session, ref.name)
    if ref.alias is not None:
        return _version_by_alias(session, adapter, ref.alias)
    query = select(AdapterVersion).where(AdapterVersion.adapter_id == adapter.id)
    if ref.version is not None:
        row = session.scalar(query.where(AdapterVersion.version == ref.version))
    else:
        row = session.scalar(query.order_by(AdapterVersion.version.desc()).limit(1))
    if row is None:
        latest = _latest_version(session, adapter.id)
        hint = f"latest is {latest}" if latest else "it has no versions yet"
        raise NotFound(f"adapter {ref.name!r} has no version {ref.version} ({hint})")
    return row


def _latest_version(session: Session, adapter_id: int) -> int | None:
    return session.scalar(
        select(func.max(AdapterVersion.version)).where(AdapterVersion.adapter_id == adapter_id)
    )


def _version_by_alias(session: Session, adapter: Adapter, alias: str) -> AdapterVersion:
    alias_row = session.scalar(
        select(Alias).where(Alias.adapter_id == adapter.id, Alias.name == alias)
    )
    if alias_row is None:
        known = session.scalars(select(Alias.name).where(Alias.adapter_id == adapter.id)).all()
        hint = f"its aliases are {', '.join(sorted(known))}" if known else "it has no aliases"
        raise NotFound(f"adapter {adapter.name!r} has no alias {alias!r} ({hint})")
    row = session.get(AdapterVersion, alias_row.version_id)
    assert row is not None, "aliases reference versions through a foreign key"
    return row


def _load_details(session: Session, row: AdapterVersion) -> AdapterVersion:
    loaded = session.scalars(
        select(AdapterVersion)
        .where(AdapterVersion.id == row.id)
        .options(
            selectinload(AdapterVersion.adapter),
            selectinload(AdapterVersion.base_model),
            selectinload(AdapterVersion.training_run),
            selectinload(AdapterVersion.files),
            selectinload(AdapterVersion.tags),
        )
        .execution_options(populate_existing=True)
    ).one()
    return loaded


def version_dict(session: Session, row: AdapterVersion, *, created: bool = True) -> dict[str, Any]:
    """The full public description of a version, as ``show`` prints it."""
    row = _load_details(session, row)
    base: BaseModelRecord = row.base_model
    run: TrainingRun | None = row.training_run
    return {
        "name": row.adapter.name,
        "version": row.version,
        "ref": f"{row.adapter.name}@{row.version}",
        "digest": row.manifest_digest,
        "created": created,
        "status": row.status,
        "peft_type": row.peft_type,
        "method": row.method,
        "task_type": row.task_type,
        "rank": row.rank,
        "target_modules": row.target_modules,
        "trainable_params": row.trainable_params,
        "total_size": row.total_size,
        "config": row.peft_config,
        "base_model": {
            "name": base.name,
            "revision": base.revision,
            "fingerprint": base.fingerprint,
            "source_uri": base.source_uri,
        },
        "files": [{"path": f.path, "size": f.size, "digest": f.digest} for f in row.files],
        "tags": {tag.key: tag.value for tag in row.tags},
        "datasets": _datasets(session, row.id),
        "parents": _parents(session, row.id),
        "aliases": sorted(
            session.scalars(select(Alias.name).where(Alias.version_id == row.id)).all()
        ),
        "run": run_dict(run) if run is not None else None,
        "description": row.description,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
    }


def _datasets(session: Session, version_id: int) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(DatasetVersion)
        .join(VersionDataset, VersionDataset.dataset_id == DatasetVersion.id)
        .where(VersionDataset.version_id == version_id)
        .order_by(DatasetVersion.name, DatasetVersion.version)
    )
    return [{"name": d.name, "version": d.version, "digest": d.digest} for d in rows]


def _parents(session: Session, version_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(VersionParent, AdapterVersion, Adapter.name)
        .join(AdapterVersion, AdapterVersion.id == VersionParent.parent_id)
        .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
        .where(VersionParent.version_id == version_id)
        .order_by(Adapter.name, AdapterVersion.version)
    ).all()
    return [
        {
            "ref": f"{name}@{parent.version}",
            "relation": edge.relation,
            "weight": edge.weight,
            "digest": parent.manifest_digest,
        }
        for edge, parent, name in rows
    ]


def get_version(session: Session, ref: str) -> dict[str, Any]:
    return version_dict(session, get_version_row(session, ref))


def get_lineage(session: Session, ref: str) -> dict[str, Any]:
    """Return the version's base model, datasets, run and its ancestors, recursively."""
    return _lineage_node(session, get_version_row(session, ref), depth=0, seen=set())


def _lineage_node(
    session: Session, row: AdapterVersion, *, depth: int, seen: set[int]
) -> dict[str, Any]:
    details = version_dict(session, row)
    node = {
        key: details[key]
        for key in ("ref", "digest", "method", "base_model", "datasets", "run", "created_at")
    }
    seen.add(row.id)
    parents = []
    for parent in details["parents"]:
        parent_row = get_version_row(session, parent["ref"])
        if parent_row.id in seen or depth >= MAX_LINEAGE_DEPTH:
            parents.append({**parent, "truncated": True})
            continue
        child = _lineage_node(session, parent_row, depth=depth + 1, seen=seen)
        parents.append({**parent, **child})
    node["parents"] = parents
    return node
