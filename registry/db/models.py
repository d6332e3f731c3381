"""Tables of the registry.

Rows never leave the services: ``registry.services`` converts them to plain
dicts/dataclasses before returning. Relationships are ``lazy="raise"`` so a
missing eager load fails loudly instead of issuing a query per row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from registry.db.base import Base, JSONType, UTCDateTime, utcnow

NAME_LENGTH = 128
DIGEST_LENGTH = 71  # "sha256:" + 64 hex digits


class Blob(Base):
    """A verified, content-addressed object in the blob store."""

    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class UploadSession(Base):
    """A resumable multipart upload of one blob."""

    __tablename__ = "upload_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    part_size: Mapped[int] = mapped_column(BigInteger)
    backend_handle: Mapped[str] = mapped_column(Text)
    # Received parts: {"<n>": {"size", "digest", "etag"}}.
    parts: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BaseModelRecord(Base):
    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    source_uri: Mapped[str] = mapped_column(Text)
    revision: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    architecture: Mapped[str] = mapped_column(String(NAME_LENGTH))
    fingerprint: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # Tensor name -> {"shape": [...], "dtype": "F32"}.
    manifest: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # [{"path", "size", "digest"}] for every file of the model directory.
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    uploaded: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    version: Mapped[str] = mapped_column(String(NAME_LENGTH))
    uri: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(16))
    row_count: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[str]] = mapped_column(JSONType)
    label_set: Mapped[list[Any] | None] = mapped_column(JSONType)
    # Split name -> row count.
    splits: Mapped[dict[str, int]] = mapped_column(JSONType)
    uploaded: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Adapter(Base):
    __tablename__ = "adapters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    task_type: Mapped[str | None] = mapped_column(String(64))
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    # Highest version number ever assigned; incremented in the database so that
    # numbers are never reused, even after a version is deleted.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    base_model: Mapped[BaseModelRecord] = relationship(lazy="raise")


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str | None] = mapped_column(String(64))
    method: Mapped[str | None] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    code_version: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    packages: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    hardware: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    metrics: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    trainable_params: Mapped[int | None] = mapped_column(BigInteger)
    total_params: Mapped[int | None] = mapped_column(BigInteger)
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    extra: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class AdapterVersion(Base):
    """An immutable version of an adapter: its files, config and lineage."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("adapter_id", "version"),
        # Byte-identical content pushed again maps to the existing version.
        UniqueConstraint("adapter_id", "manifest_digest"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    version: Mapped[int] = mapped_column(Integer)
    peft_type: Mapped[str] = mapped_column(String(64), index=True)
    method: Mapped[str] = mapped_column(String(64), index=True)
    task_type: Mapped[str | None] = mapped_column(String(64))
    peft_config: Mapped[dict[str, Any]] = mapped_column(JSONType)
    rank: Mapped[int | None] = mapped_column(Integer)
    target_modules: Mapped[list[str]] = mapped_column(JSONType, default=list)
    trainable_params: Mapped[int] = mapped_column(BigInteger)
    manifest_digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    total_size: Mapped[int] = mapped_column(BigInteger)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id"))
    status: Mapped[str] = mapped_column(String(32), default="ready")
    description: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    adapter: Mapped[Adapter] = relationship(lazy="raise")
    base_model: Mapped[BaseModelRecord] = relationship(lazy="raise")
    training_run: Mapped[TrainingRun | None] = relationship(lazy="raise")
    files: Mapped[list[VersionFile]] = relationship(
        lazy="raise", order_by="VersionFile.path", cascade="all, delete-orphan"
    )
    tags: Mapped[list[VersionTag]] = relationship(
        lazy="raise", order_by="VersionTag.key", cascade="all, delete-orphan"
    )


class VersionFile(Base):
    __tablename__ = "version_files"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True
    )
    path: Mapped[str] = mapped_column(String(255), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("blobs.digest"), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class VersionTag(Base):
    __tablename__ = "version_tags"
    __table_args__ = (Index("ix_version_tags_key_value", "key", "value"),)

    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class VersionDataset(Base):
    __tablename__ = "version_datasets"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True
    )
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), primary_key=True)
    dataset: Mapped[DatasetVersion] = relationship(lazy="raise")


class VersionParent(Base):
    """Lineage edge: a version derived from another (merge, continued training)."""

    __tablename__ = "version_parents"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True
    )
    parent_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"), primary_key=True)
    relation: Mapped[str] = mapped_column(String(32))
    weight: Mapped[float | None] = mapped_column(Float)


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("adapter_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AliasMove(Base):
    """Append-only history of every alias move."""

    __tablename__ = "alias_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), index=True)
    alias: Mapped[str] = mapped_column(String(NAME_LENGTH))
    from_version_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    to_version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    actor: Mapped[str] = mapped_column(String(NAME_LENGTH))
    reason: Mapped[str | None] = mapped_column(Text)
    # Evaluation ids and gate decision that justified the move.
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    promotion_request_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    # sha256 of the token; the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class IdempotencyRecord(Base):
    """The response of a request sent with an Idempotency-Key, replayed on retry."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    actor: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEvent(Base):
    """Append-only record of every state change."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(NAME_LENGTH))
    action: Mapped[str] = mapped_column(String(64), index=True)
    entity_type: Mapped[str] = mapped_column(String(64))
    entity_id: Mapped[str] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class MergedModel(Base):
    """A full set of weights made by folding one or more adapter versions into their base."""

    __tablename__ = "merged_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    # merge_and_unload, or the add_weighted_adapter combination (linear, ties, ...).
    method: Mapped[str] = mapped_column(String(32))
    dtype: Mapped[str] = mapped_column(String(16))
    # Largest |merged - adapter-on-base| over the sample outputs, and the limit it passed.
    max_abs_diff: Mapped[float | None] = mapped_column(Float)
    tolerance: Mapped[float | None] = mapped_column(Float)
    # [{"path", "size", "digest"}] for every file of the merged model directory.
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    total_size: Mapped[int] = mapped_column(BigInteger)
    uploaded: Mapped[bool] = mapped_column(Boolean, default=False)
    # Shard size, sample input shape, output directory and other merge settings.
    details: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MergedModelParent(Base):
    """Lineage edge from a merged model to an adapter version folded into it."""

    __tablename__ = "merged_model_parents"

    merged_model_id: Mapped[int] = mapped_column(
        ForeignKey("merged_models.id", ondelete="CASCADE"), primary_key=True
    )
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"), primary_key=True)
    weight: Mapped[float | None] = mapped_column(Float)


class Evaluation(Base):
    """Metrics of one subject (base model, adapter version or merged model) on one dataset split."""

    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_subject", "subject_type", "version_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # base_model, adapter_version or merged_model.
    subject_type: Mapped[str] = mapped_column(String(32))
    # The base model the subject runs on (the subject itself for base_model).
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    merged_model_id: Mapped[int | None] = mapped_column(ForeignKey("merged_models.id"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    # sha256 of the dataset file the evaluator read, checked against the registered one.
    dataset_digest: Mapped[str] = mapped_column(String(DIGEST_LENGTH))
    split: Mapped[str] = mapped_column(String(NAME_LENGTH))
    task: Mapped[str] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    sample_count: Mapped[int] = mapped_column(Integer)
    # How a base model was run where it has no head of its own (seq-cls).
    baseline: Mapped[str | None] = mapped_column(String(64))
    # max_length, max_samples and other settings that change the numbers.
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Set on base-model evaluations only: sha256 over everything that determines them.
    cache_key: Mapped[str | None] = mapped_column(String(64), index=True)
    promotion_request_id: Mapped[int | None] = mapped_column(
        ForeignKey("promotion_requests.id"), index=True
    )
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GatePolicy(Base):
    """Promotion gate for one adapter and alias; '*' in either column matches every name."""

    __tablename__ = "gate_policies"
    __table_args__ = (UniqueConstraint("adapter_name", "alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    alias: Mapped[str] = mapped_column(String(NAME_LENGTH))
    # Primary metric; None means the task's default (accuracy or loss).
    metric: Mapped[str | None] = mapped_column(String(32))
    # Required improvement of the candidate over the alias's current version.
    min_margin: Mapped[float] = mapped_column(Float, default=0.0)
    # How far the candidate may fall below the base model on any dataset.
    max_regression: Mapped[float] = mapped_column(Float, default=0.0)
    # Protected aliases always need an approval; this requires one on any alias.
    require_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PromotionRequest(Base):
    """A request to move an alias to a version, decided by evaluations and the gate."""

    __tablename__ = "promotion_requests"
    __table_args__ = (Index("ix_promotion_requests_state_lease", "state", "lease_expires_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), index=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id"))
    alias: Mapped[str] = mapped_column(String(NAME_LENGTH))
    state: Mapped[str] = mapped_column(String(32))
    # NAME@VERSION of every evaluation dataset; the first one is primary.
    datasets: Mapped[list[str]] = mapped_column(JSONType)
    split: Mapped[str] = mapped_column(String(NAME_LENGTH))
    reason: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(NAME_LENGTH))
    # The version the alias pointed at when a worker claimed the request.
    current_version_id: Mapped[int | None] = mapped_column(ForeignKey("adapter_versions.id"))
    claimed_by: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Gate policy, checks with their numbers, evaluation ids, outcome.
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutboxEvent(Base):
    """An event written in the transaction of the change it reports, delivered later."""

    __tablename__ = "outbox_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # True once a delivery row exists for every webhook URL configured at the time.
    dispatched: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """Delivery of one outbox event to one webhook URL, retried until it succeeds or gives up."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "url"),
        Index("ix_webhook_deliveries_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[int] = mapped_column(ForeignKey("outbox_events.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    # pending, delivered or failed (gave up after the last retry).
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookAttempt(Base):
    """Append-only log of every HTTP attempt of a webhook delivery."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
