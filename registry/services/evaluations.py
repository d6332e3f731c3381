"""Evaluations: metrics of a base model, adapter version or merged model on a dataset split.

Base-model evaluations are cached. Their ``cache_key`` is a sha256 over the base
fingerprint, the dataset digest, the split, the sorted metric names, the
baseline and the settings that change the numbers (max_length, max_samples), so
an evaluator looks up a cached result before running the base model again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db.models import (
    Adapter,
    AdapterVersion,
    BaseModelRecord,
    DatasetVersion,
    Evaluation,
    MergedModel,
    PromotionRequest,
)
from registry.errors import InvalidInput, NotFound
from registry.services.actors import Actor
from registry.services.audit import record_event
from registry.services.base_models import get_base_model_row
from registry.services.datasets import get_dataset_row
from registry.services.gates import TASK_METRICS
from registry.services.merges import get_merged_model_row
from registry.services.names import check_name, parse_dataset_reference, parse_reference
from registry.services.versions import get_version_row

log = logging.getLogger(__name__)

SUBJECT_TYPES = ("base_model", "adapter_version", "merged_model")
MAX_METRICS = 32
MAX_LIST = 500
_METRIC_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_BASELINE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def record_evaluation(session: Session, actor: Actor, spec: dict[str, Any]) -> dict[str, Any]:
    """Store one evaluation; raises NotFound for an unknown subject or dataset.

    Raises InvalidInput when the dataset digest the evaluator read differs from
    the registered one, or when metrics are not finite numbers.
    """
    actor.require("writer")
    subject = _resolve_subject(session, spec.get("subject"))
    dataset = get_dataset_row(session, *parse_dataset_reference(str(spec.get("dataset", ""))))
    _check_digest(dataset, spec.get("dataset_digest"))
    task = _check_task(spec.get("task"))
    metrics = _check_metrics(spec.get("metrics"))
    settings = _check_object(spec.get("settings") or {}, "settings")
    row = Evaluation(
        subject_type=subject["type"],
        base_model_id=subject["base_model_id"],
        version_id=subject.get("version_id"),
        merged_model_id=subject.get("merged_model_id"),
        dataset_id=dataset.id,
        dataset_digest=dataset.digest,
        split=_check_split(dataset, spec.get("split")),
        task=task,
        metrics=metrics,
        sample_count=_check_count(spec.get("sample_count")),
        baseline=_check_baseline(spec.get("baseline")),
        settings=settings,
        promotion_request_id=_check_promotion(session, spec.get("promotion_request_id")),
        created_by=actor.name,
    )
    if subject["type"] == "base_model":
        row.cache_key = base_cache_key(
            fingerprint=subject["fingerprint"],
            dataset_digest=dataset.digest,
            split=row.split,
            metrics=sorted(metrics),
            baseline=row.baseline,
            settings=settings,
        )
    session.add(row)
    session.flush()
    record_event(
        session,
        actor,
        "evaluation.recorded",
        entity_type="evaluation",
        entity_id=str(row.id),
        details={
            "subject": subject["ref"],
            "dataset": f"{dataset.name}@{dataset.version}",
            "split": row.split,
            "metrics": metrics,
        },
    )
    return evaluation_dict(session, row)


def _resolve_subject(session: Session, subject: Any) -> dict[str, Any]:
    if not isinstance(subject, dict) or subject.get("type") not in SUBJECT_TYPES:
        raise InvalidInput(
            f"subject {subject!r} must be {{type, ref}} with type one of {', '.join(SUBJECT_TYPES)}"
        )
    ref = str(subject.get("ref", ""))
    if subject["type"] == "base_model":
        base = get_base_model_row(session, ref)
        return {
            "type": "base_model",
            "ref": base.name,
            "base_model_id": base.id,
            "fingerprint": base.fingerprint,
        }
    if subject["type"] == "adapter_version":
        version = get_version_row(session, parse_reference(ref))
        return {
            "type": "adapter_version",
            "ref": _version_ref(session, version.id),
            "base_model_id": version.base_model_id,
            "version_id": version.id,
        }
    merged = get_merged_model_row(session, ref)
    return {
        "type": "merged_model",
        "ref": merged.name,
        "base_model_id": merged.base_model_id,
        "merged_model_id": merged.id,
    }


def _check_digest(dataset: DatasetVersion, digest: Any) -> None:
    if digest != dataset.digest:
        raise InvalidInput(
            f"the evaluated file of dataset {dataset.name}@{dataset.version} has digest "
            f"{digest!r}, but the registered file has {dataset.digest}; evaluate the "
            "registered file"
        )


def _check_task(task: Any) -> str:
    if task not in TASK_METRICS:
        raise InvalidInput(f"unknown task {task!r}; use one of {', '.join(TASK_METRICS)}")
    return str(task)


def _check_baseline(baseline: Any) -> str | None:
    if baseline is None:
        return None
    if not isinstance(baseline, str) or not _BASELINE.match(baseline):
        raise InvalidInput(
            f"invalid baseline {baseline!r}: use 1-64 lowercase letters, digits or '-'"
        )
    return baseline


def _check_promotion(session: Session, request_id: Any) -> int | None:
    if request_id is None:
        return None
    if session.get(PromotionRequest, request_id) is None:
        raise NotFound(f"promotion request {request_id!r} not found")
    return int(request_id)


def _check_split(dataset: DatasetVersion, split: Any) -> str:
    check_name(str(split), what="split")
    if dataset.splits and split not in dataset.splits:
        raise InvalidInput(
            f"dataset {dataset.name}@{dataset.version} has no split {split!r}; its splits are "
            f"{', '.join(sorted(dataset.splits))}"
        )
    return split


def _check_metrics(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, dict) or not metrics or len(metrics) > MAX_METRICS:
        raise InvalidInput(
            f"metrics must be an object of 1 to {MAX_METRICS} name: number pairs, got {metrics!r}"
        )
    result: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not _METRIC_NAME.match(name):
            raise InvalidInput(f"invalid metric name {name!r}: use lowercase letters, digits, '_'")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise InvalidInput(f"metric {name!r} must be a finite number, got {value!r}")
        result[name] = float(value)
    return result


def _check_count(count: Any) -> int:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidInput(f"sample_count must be a positive integer, got {count!r}")
    return count


def _check_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object, got {value!r}")
    return value


def base_cache_key(
    *,
    fingerprint: str,
    dataset_digest: str,
    split: str,
    metrics: list[str],
    baseline: str | None,
    settings: dict[str, Any],
) -> str:
    """Return the sha256 hex that identifies a base-model evaluation's inputs."""
    canonical = json.dumps(
        [fingerprint, dataset_digest, split, sorted(metrics), baseline, settings],
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def find_cached_base_evaluation(session: Session, spec: dict[str, Any]) -> dict[str, Any] | None:
    """Return the newest base-model evaluation with the same inputs as ``spec``, or None."""
    base = get_base_model_row(session, str(spec.get("base_model", "")))
    dataset = get_dataset_row(session, *parse_dataset_reference(str(spec.get("dataset", ""))))
    metrics = spec.get("metrics")
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise InvalidInput(f"metrics must be a list of metric names, got {metrics!r}")
    key = base_cache_key(
        fingerprint=base.fingerprint,
        dataset_digest=dataset.digest,
        split=_check_split(dataset, spec.get("split")),
        metrics=metrics,
        baseline=spec.get("baseline"),
        settings=_check_object(spec.get("settings") or {}, "settings"),
    )
    row = session.scalar(
        select(Evaluation)
        .where(Evaluation.cache_key == key)
        .order_by(Evaluation.id.desc())
        .limit(1)
    )
    return evaluation_dict(session, row) if row is not None else None


def get_evaluation(session: Session, evaluation_id: int) -> dict[str, Any]:
    return evaluation_dict(session, get_evaluation_row(session, evaluation_id))


def get_evaluation_row(session: Session, evaluation_id: int) -> Evaluation:
    row = session.get(Evaluation, evaluation_id)
    if row is None:
        raise NotFound(f"evaluation {evaluation_id} not found")
    return row


def list_evaluations(
    session: Session,
    *,
    subject: str | None = None,
    dataset: str | None = None,
    promotion_request_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Evaluations, newest first; ``subject`` is an adapter reference (name or name@3)."""
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"invalid limit {limit}: use 1 to {MAX_LIST}")
    query = select(Evaluation).order_by(Evaluation.id.desc()).limit(limit)
    if subject:
        query = _filter_subject(session, query, subject)
    if dataset:
        row = get_dataset_row(session, *parse_dataset_reference(dataset))
        query = query.where(Evaluation.dataset_id == row.id)
    if promotion_request_id is not None:
        query = query.where(Evaluation.promotion_request_id == promotion_request_id)
    return [evaluation_dict(session, row) for row in session.scalars(query)]


def _filter_subject(session: Session, query: Any, subject: str) -> Any:
    reference = parse_reference(subject)
    if reference.version is None and reference.alias is None:
        version_ids = (
            select(AdapterVersion.id)
            .join(Adapter, Adapter.id == AdapterVersion.adapter_id)
            .where(Adapter.name == reference.name)
        )
        return query.where(Evaluation.version_id.in_(version_ids))
    return query.where(Evaluation.version_id == get_version_row(session, reference).id)


def evaluations_by_ids(session: Session, ids: list[int]) -> list[dict[str, Any]]:
    """Return the evaluations with these ids in the given order, skipping unknown ids."""
    rows = {
        row.id: row for row in session.scalars(select(Evaluation).where(Evaluation.id.in_(ids)))
    }
    return [evaluation_dict(session, rows[i]) for i in ids if i in rows]


def evaluation_dict(session: Session, row: Evaluation) -> dict[str, Any]:
    dataset = session.get(DatasetVersion, row.dataset_id)
    base = session.get(BaseModelRecord, row.base_model_id)
    assert dataset is not None and base is not None, "foreign keys guarantee both rows"
    return {
        "id": row.id,
        "subject": {"type": row.subject_type, "ref": _subject_ref(session, row, base.name)},
        "base_model": base.name,
        "dataset": f"{dataset.name}@{dataset.version}",
        "dataset_digest": row.dataset_digest,
        "split": row.split,
        "task": row.task,
        "metrics": row.metrics,
        "sample_count": row.sample_count,
        "baseline": row.baseline,
        "settings": row.settings,
        "cache_key": row.cache_key,
        "promotion_request_id": row.promotion_request_id,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
    }


def _subject_ref(session: Session, row: Evaluation, base_name: str) -> str:
    if row.version_id is not None:
        return _version_ref(session, row.version_id)
    if row.merged_model_id is not None:
        merged = session.get(MergedModel, row.merged_model_id)
        assert merged is not None
        return merged.name
    return base_name


def _version_ref(session: Session, version_id: int) -> str:
    name, number = session.execute(
        select(Adapter.name, AdapterVersion.version)
        .join(AdapterVersion, AdapterVersion.adapter_id == Adapter.id)
        .where(AdapterVersion.id == version_id)
    ).one()
    return f"{name}@{number}"


def evaluation_summaries(session: Session, ids: list[int]) -> list[dict[str, Any]]:
    """Short forms of the evaluations with these ids: subject, dataset, split, metrics."""
    return [
        {key: item[key] for key in ("id", "subject", "dataset", "split", "metrics", "sample_count")}
        for item in evaluations_by_ids(session, ids)
    ]
