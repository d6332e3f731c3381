"""Committing an adapter version: validation at the door, then one transaction.

The client uploads blobs first and then commits a manifest naming them. The
commit reads ``adapter_config.json`` and the safetensors header back from the
store (the bytes the registry will serve, not what the client claims), checks
them against the base model's module manifest, and inserts the version with its
files, tags, datasets, run and parents. Nothing is written unless every check
passes, and the whole version appears at once or not at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from registry.adapter_validation import AdapterSummary, validate_adapter, validate_adapter_files
from registry.base_manifest import FileEntry
from registry.db.base import utcnow
from registry.db.dialect import insert_ignore
from registry.db.models import (
    Adapter,
    AdapterVersion,
    BaseModelRecord,
    Blob,
    IdempotencyRecord,
    VersionDataset,
    VersionFile,
    VersionParent,
    VersionTag,
)
from registry.errors import Conflict, IntegrityError, InvalidAdapter, InvalidInput, NotFound
from registry.safetensors_format import parse_header, read_header_length
from registry.services.actors import Actor
from registry.services.audit import record_event
from registry.services.base_models import get_base_model_row
from registry.services.datasets import get_dataset_row
from registry.services.files import check_file_entries
from registry.services.names import check_name, parse_dataset_reference, parse_reference
from registry.services.runs import build_training_run
from registry.services.versions import find_version_row, get_version_row, version_dict
from registry.storage.base import BlobStore

log = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1024 * 1024
MAX_TAGS = 64
PARENT_RELATIONS = ("merge", "finetune", "derived")


def commit_version(
    session: Session,
    store: BlobStore,
    actor: Actor,
    *,
    name: str,
    spec: dict[str, Any],
    max_header_bytes: int,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Register a new version of adapter ``name`` from uploaded blobs.

    Returns the version with ``created`` False when byte-identical content was
    pushed before. Raises InvalidInput/InvalidAdapter for anything the registry
    cannot explain, NotFound for a missing base model, dataset, parent or blob,
    Conflict when the adapter belongs to another base model, IntegrityError
    when a stored file no longer hashes to its digest.
    """
    actor.require("writer")
    check_name(name, what="adapter name")
    request_hash = _request_hash(name, spec)
    if idempotency_key:
        replay = _find_idempotent_response(session, actor, idempotency_key, request_hash)
        if replay is not None:
            return replay

    files = check_file_entries(spec.get("files"), what=f"adapter {name!r}")
    validate_adapter_files({entry.path: entry.size for entry in files})
    _check_blobs(session, files)
    base = get_base_model_row(session, _required_str(spec, "base_model"))
    try:
        config = _read_config(store, files)
        summary = validate_adapter(
            config,
            _read_tensors(store, files, max_header_bytes=max_header_bytes),
            base_manifest=base.manifest,
            base_config=base.config,
            filename=WEIGHTS_FILE,
        )
    except InvalidInput:
        # Damaged stored bytes would otherwise be reported as an invalid adapter.
        # NOTE: damage outside the config and the safetensors header passes
        # validation undetected here; `adapterreg fsck` finds it.
        _verify_stored_files(store, files)
        raise
    adapter = _get_or_create_adapter(session, actor, name=name, base=base, summary=summary)
    result = _insert_version_once(
        session,
        actor,
        adapter=adapter,
        base=base,
        files=files,
        config=config,
        summary=summary,
        spec=spec,
    )
    if idempotency_key:
        _store_idempotent_response(session, actor, idempotency_key, request_hash, result)
    return result


def _required_str(spec: dict[str, Any], key: str) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"missing {key!r}: the commit must name it as a string")
    return value


def _request_hash(name: str, spec: dict[str, Any]) -> str:
    canonical = json.dumps({"name": name, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def manifest_digest(files: list[FileEntry]) -> str:
    """Digest of a version's content: sha256 over the sorted (path, size, digest) list."""
    canonical = json.dumps(
        [[entry.path, entry.size, entry.digest] for entry in sorted(files, key=lambda e: e.path)],
        separators=(",", ":"),
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _check_blobs(session: Session, files: list[FileEntry]) -> None:
    # FOR SHARE holds off gc, which locks a row FOR UPDATE before deleting it,
    # until this transaction ends (SQLite's write lock already does).
    query = select(Blob).where(Blob.digest.in_([f.digest for f in files]))
    rows = {blob.digest: blob for blob in session.scalars(query.with_for_update(read=True))}
    for entry in files:
        blob = rows.get(entry.digest)
        if blob is None:
            raise NotFound(
                f"file {entry.path!r} names blob {entry.digest}, which this registry does not "
                "hold; upload it before committing"
            )
        if blob.size != entry.size:
            raise InvalidInput(
                f"file {entry.path!r} declares {entry.size} bytes but blob {entry.digest} "
                f"has {blob.size}"
            )


def _file(files: list[FileEntry], path: str) -> FileEntry:
    for entry in files:
        if entry.path == path:
            return entry
    raise InvalidAdapter(f"adapter has no {path!r}; save it with PeftModel.save_pretrained")


def _read_config(store: BlobStore, files: list[FileEntry]) -> dict[str, Any]:
    entry = _file(files, CONFIG_FILE)
    if entry.size > MAX_CONFIG_BYTES:
        raise InvalidAdapter(
            f"{CONFIG_FILE} is {entry.size} bytes; the limit is {MAX_CONFIG_BYTES}"
        )
    raw = store.read_range(entry.digest, 0, entry.size)
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidAdapter(f"{CONFIG_FILE} is not valid UTF-8 JSON: {e}") from e
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{CONFIG_FILE} must hold a JSON object, got {type(config).__name__}")
    return config


def _verify_stored_files(store: BlobStore, files: list[FileEntry]) -> None:
    """Hash the stored adapter files; raise IntegrityError for one whose bytes changed."""
    for entry in files:
        if entry.path not in (CONFIG_FILE, WEIGHTS_FILE):
            continue
        sha256 = hashlib.sha256()
        size = 0
        for chunk in store.open_blob(entry.digest):
            sha256.update(chunk)
            size += len(chunk)
        found = f"sha256:{sha256.hexdigest()}"
        if found != entry.digest or size != entry.size:
            log.error(
                "commit read damaged blob %s (%s): it hashes to %s (%d bytes)",
                entry.digest,
                entry.path,
                found,
                size,
            )
            raise IntegrityError(
                f"the stored copy of {entry.path!r} (blob {entry.digest}) is damaged: it hashes "
                f"to {found} ({size} bytes); run `adapterreg fsck` on the server to move it "
                "aside, then push again"
            )


def _read_tensors(
    store: BlobStore, files: list[FileEntry], *, max_header_bytes: int
) -> dict[str, Any]:
    entry = _file(files, WEIGHTS_FILE)
    first8 = store.read_range(entry.digest, 0, 8)
    header_length = read_header_length(
        first8, file_size=entry.size, max_header_bytes=max_header_bytes, filename=WEIGHTS_FILE
    )
    prefix = store.read_range(entry.digest, 0, 8 + header_length)
    header = parse_header(
        prefix, file_size=entry.size, max_header_bytes=max_header_bytes, filename=WEIGHTS_FILE
    )
    return dict(header.tensors)


def _get_or_create_adapter(
    session: Session, actor: Actor, *, name: str, base: BaseModelRecord, summary: AdapterSummary
) -> Adapter:
    inserted = insert_ignore(
        session,
        Adapter.__table__,  # type: ignore[arg-type]
        {
            "name": name,
            "task_type": summary.task_type,
            "base_model_id": base.id,
            "last_version": 0,
            "created_by": actor.name,
            "created_at": utcnow(),
        },
        conflict_columns=["name"],
    )
    adapter = session.scalars(select(Adapter).where(Adapter.name == name)).one()
    if inserted:
        record_event(
            session,
            actor,
            "adapter.created",
            entity_type="adapter",
            entity_id=name,
            details={"base_model": base.name},
        )
    if adapter.base_model_id != base.id:
        owner = session.get(BaseModelRecord, adapter.base_model_id)
        raise Conflict(
            f"adapter {name!r} belongs to base model {owner.name if owner else '?'!r}, not "
            f"{base.name!r}; push this adapter under a new name"
        )
    return adapter


def _insert_version_once(
    session: Session,
    actor: Actor,
    *,
    adapter: Adapter,
    base: BaseModelRecord,
    files: list[FileEntry],
    config: dict[str, Any],
    summary: AdapterSummary,
    spec: dict[str, Any],
) -> dict[str, Any]:
    digest = manifest_digest(files)
    existing = find_version_row(session, adapter_id=adapter.id, manifest_digest=digest)
    if existing is not None:
        return version_dict(session, existing, created=False)
    try:
        # The savepoint also undoes the version counter increment when a
        # concurrent push of the same bytes wins the unique (adapter, digest) key.
        with session.begin_nested():
            row = _insert_version(
                session,
                actor,
                adapter=adapter,
                base=base,
                files=files,
                config=config,
                summary=summary,
                spec=spec,
                digest=digest,
            )
    except DBIntegrityError:
        existing = find_version_row(session, adapter_id=adapter.id, manifest_digest=digest)
        if existing is None:
            raise
        log.info(
            "adapter %s: identical content committed concurrently as version %d",
            adapter.name,
            existing.version,
        )
        return version_dict(session, existing, created=False)
    return version_dict(session, row, created=True)


def _next_version_number(session: Session, adapter_id: int) -> int:
    """Assign the next version in the database: the row lock serializes concurrent pushes."""
    return session.execute(
        update(Adapter)
        .where(Adapter.id == adapter_id)
        .values(last_version=Adapter.last_version + 1)
        .returning(Adapter.last_version)
    ).scalar_one()


def _insert_version(
    session: Session,
    actor: Actor,
    *,
    adapter: Adapter,
    base: BaseModelRecord,
    files: list[FileEntry],
    config: dict[str, Any],
    summary: AdapterSummary,
    spec: dict[str, Any],
    digest: str,
) -> AdapterVersion:
    dataset_rows = [
        get_dataset_row(session, *parse_dataset_reference(ref))
        for ref in _string_list(spec, "datasets")
    ]
    parents = _resolve_parents(session, spec.get("parents") or [])
    tags = _check_tags(spec.get("tags") or {})
    run = build_training_run(spec.get("run"))
    if run is not None:
        session.add(run)
        session.flush()

    row = AdapterVersion(
        adapter_id=adapter.id,
        version=_next_version_number(session, adapter.id),
        peft_type=summary.peft_type,
        method=summary.method,
        task_type=summary.task_type,
        peft_config=config,
        rank=summary.r,
        target_modules=list(summary.target_modules),
        trainable_params=summary.trainable_params,
        manifest_digest=digest,
        total_size=sum(entry.size for entry in files),
        base_model_id=base.id,
        training_run_id=run.id if run is not None else None,
        description=spec.get("description"),
        created_by=actor.name,
    )
    session.add(row)
    session.flush()
    _add_children(session, row, files=files, tags=tags, datasets=dataset_rows, parents=parents)
    record_event(
        session,
        actor,
        "version.created",
        entity_type="adapter_version",
        entity_id=f"{adapter.name}@{row.version}",
        details={"digest": digest, "method": summary.method, "base_model": base.name},
    )
    return row


def _add_children(
    session: Session,
    row: AdapterVersion,
    *,
    files: list[FileEntry],
    tags: dict[str, str],
    datasets: list[Any],
    parents: list[tuple[AdapterVersion, str, float | None]],
) -> None:
    for entry in files:
        session.add(
            VersionFile(version_id=row.id, path=entry.path, digest=entry.digest, size=entry.size)
        )
    for key, value in tags.items():
        session.add(VersionTag(version_id=row.id, key=key, value=value))
    for dataset in {d.id: d for d in datasets}.values():
        session.add(VersionDataset(version_id=row.id, dataset_id=dataset.id))
    for parent, relation, weight in parents:
        session.add(
            VersionParent(version_id=row.id, parent_id=parent.id, relation=relation, weight=weight)
        )
    session.flush()


def _string_list(spec: dict[str, Any], key: str) -> list[str]:
    value = spec.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidInput(f"{key!r} must be a list of strings, got {value!r}")
    return value


def _check_tags(tags: Any) -> dict[str, str]:
    if not isinstance(tags, dict) or len(tags) > MAX_TAGS:
        raise InvalidInput(f"tags must be an object of at most {MAX_TAGS} key/value strings")
    for key, value in tags.items():
        check_name(key, what="tag key")
        if not isinstance(value, str) or len(value) > 255 or not value.isprintable():
            raise InvalidInput(
                f"tag {key!r} has invalid value {value!r}: use printable text of at most 255 "
                "characters"
            )
    return dict(tags)


def _resolve_parents(
    session: Session, parents: Any
) -> list[tuple[AdapterVersion, str, float | None]]:
    if not isinstance(parents, list):
        raise InvalidInput(f"parents must be a list of {{ref, relation, weight}}, got {parents!r}")
    resolved = []
    for item in parents:
        if not isinstance(item, dict) or not isinstance(item.get("ref"), str):
            raise InvalidInput(f"parent {item!r} must be an object with a string 'ref'")
        ref = parse_reference(item["ref"])
        if ref.version is None:
            raise InvalidInput(f"parent {item['ref']!r} must name a version (name@3)")
        relation = item.get("relation", "derived")
        if relation not in PARENT_RELATIONS:
            raise InvalidInput(
                f"parent relation {relation!r} is unknown; use {', '.join(PARENT_RELATIONS)}"
            )
        weight = item.get("weight")
        if weight is not None and not isinstance(weight, int | float):
            raise InvalidInput(f"parent weight {weight!r} must be a number")
        resolved.append((get_version_row(session, ref), relation, weight))
    return resolved


def _find_idempotent_response(
    session: Session, actor: Actor, key: str, request_hash: str
) -> dict[str, Any] | None:
    if len(key) > 255:
        raise InvalidInput("Idempotency-Key is longer than 255 characters")
    row = session.get(IdempotencyRecord, (key, actor.name))
    if row is None:
        return None
    if row.request_hash != request_hash:
        raise Conflict(f"Idempotency-Key {key!r} was used for a different request; use a new key")
    return dict(row.response)


def _store_idempotent_response(
    session: Session, actor: Actor, key: str, request_hash: str, response: dict[str, Any]
) -> None:
    insert_ignore(
        session,
        IdempotencyRecord.__table__,  # type: ignore[arg-type]
        {
            "key": key,
            "actor": actor.name,
            "request_hash": request_hash,
            "response": response,
            "created_at": utcnow(),
        },
        conflict_columns=["key", "actor"],
    )
