"""Paginated listings with keyset cursors (stable under concurrent inserts)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session

from registry.db.models import Adapter, AdapterVersion, Alias, BaseModelRecord, VersionTag
from registry.errors import InvalidInput
from registry.services.versions import get_adapter_row

MAX_PAGE_SIZE = 500


def encode_cursor(value: str | int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": value}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> Any:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded))["after"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidInput(
            f"invalid cursor {cursor!r}: pass the next_cursor value of the previous page"
        ) from None


def _check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"invalid limit {limit}: use 1 to {MAX_PAGE_SIZE}")
    return limit


def parse_tag_filter(tag: str | None) -> tuple[str, str] | None:
    if not tag:
        return None
    key, sep, value = tag.partition("=")
    if not sep or not key:
        raise InvalidInput(f"invalid tag filter {tag!r}: use KEY=VALUE")
    return key, value


def _version_filters(query: Select[Any], *, method: str | None, tag: str | None) -> Select[Any]:
    if method:
        query = query.where(AdapterVersion.method == method)
    tag_filter = parse_tag_filter(tag)
    if tag_filter:
        query = query.where(
            exists().where(
                VersionTag.version_id == AdapterVersion.id,
                VersionTag.key == tag_filter[0],
                VersionTag.value == tag_filter[1],
            )
        )
    return query


def list_adapters(
    session: Session,
    *,
    base_model: str | None = None,
    method: str | None = None,
    tag: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """Adapters by name; method and tag filters match adapters with such a version."""
    limit = _check_limit(limit)
    query = (
        select(
            Adapter.id, Adapter.name, Adapter.task_type, BaseModelRecord.name, Adapter.created_at
        )
        .join(BaseModelRecord, BaseModelRecord.id == Adapter.base_model_id)
        .order_by(Adapter.name)
    )
    if base_model:
        query = query.where(BaseModelRecord.name == base_model)
    if method or tag:
        matching = _version_filters(
            select(AdapterVersion.adapter_id).where(AdapterVersion.adapter_id == Adapter.id),
            method=method,
            tag=tag,
        )
        query = query.where(matching.exists())
    after = decode_cursor(cursor)
    if after is not None:
        query = query.where(Adapter.name > str(after))
    rows = session.execute(query.limit(limit + 1)).all()
    items = [_adapter_item(session, *row) for row in rows[:limit]]
    next_cursor = encode_cursor(items[-1]["name"]) if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor}


def _adapter_item(
    session: Session, adapter_id: int, name: str, task_type: str | None, base: str, created: Any
) -> dict[str, Any]:
    latest, count = session.execute(
        select(func.max(AdapterVersion.version), func.count(AdapterVersion.id)).where(
            AdapterVersion.adapter_id == adapter_id
        )
    ).one()
    aliases = session.execute(
        select(Alias.name, AdapterVersion.version)
        .join(AdapterVersion, AdapterVersion.id == Alias.version_id)
        .where(Alias.adapter_id == adapter_id)
        .order_by(Alias.name)
    ).all()
    return {
        "name": name,
        "base_model": base,
        "task_type": task_type,
        "latest_version": latest,
        "version_count": count,
        "aliases": {alias: version for alias, version in aliases},
        "created_at": created.isoformat(),
    }


def list_versions(
    session: Session,
    name: str,
    *,
    method: str | None = None,
    tag: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """Versions of one adapter, newest first."""
    limit = _check_limit(limit)
    adapter = get_adapter_row(session, name)
    query = _version_filters(
        select(AdapterVersion)
        .where(AdapterVersion.adapter_id == adapter.id)
        .order_by(AdapterVersion.version.desc()),
        method=method,
        tag=tag,
    )
    after = decode_cursor(cursor)
    if after is not None:
        if not isinstance(after, int):
            raise InvalidInput(f"invalid cursor {cursor!r} for a version listing")
        query = query.where(AdapterVersion.version < after)
    rows = session.scalars(query.limit(limit + 1)).all()
    aliases = _aliases_by_version(session, adapter.id)
    items = [
        {
            "name": adapter.name,
            "version": row.version,
            "digest": row.manifest_digest,
            "method": row.method,
            "rank": row.rank,
            "trainable_params": row.trainable_params,
            "total_size": row.total_size,
            "aliases": aliases.get(row.id, []),
            "created_by": row.created_by,
            "created_at": row.created_at.isoformat(),
        }
        for row in rows[:limit]
    ]
    next_cursor = encode_cursor(items[-1]["version"]) if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor}


def _aliases_by_version(session: Session, adapter_id: int) -> dict[int, list[str]]:
    result: dict[int, list[str]] = {}
    for alias, version_id in session.execute(
        select(Alias.name, Alias.version_id).where(Alias.adapter_id == adapter_id)
    ):
        result.setdefault(version_id, []).append(alias)
    return {key: sorted(value) for key, value in result.items()}
