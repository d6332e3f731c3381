"""Training runs as the trainer reports them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from registry.db.models import TrainingRun
from registry.errors import InvalidInput

_OBJECT_FIELDS = ("hyperparameters", "packages", "hardware")
_INT_FIELDS = ("seed", "trainable_params", "total_params")
_STR_FIELDS = ("task", "method", "code_version")
_KNOWN = {
    *_OBJECT_FIELDS,
    *_INT_FIELDS,
    *_STR_FIELDS,
    "metrics",
    "wall_time_s",
    "started_at",
    "ended_at",
}


def build_training_run(run: Any) -> TrainingRun | None:
    """Build a TrainingRun row from the ``run`` object of a push; None when absent.

    Keys this registry does not know are kept under ``extra`` rather than dropped.
    """
    if run is None:
        return None
    if not isinstance(run, dict):
        raise InvalidInput(f"run must be a JSON object, got {type(run).__name__}")
    for key in _OBJECT_FIELDS:
        if not isinstance(run.get(key, {}), dict):
            raise InvalidInput(f"run.{key} must be an object, got {run[key]!r}")
    for key in _INT_FIELDS:
        value = run.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidInput(f"run.{key} must be an integer, got {value!r}")
    for key in _STR_FIELDS:
        value = run.get(key)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"run.{key} must be a string, got {value!r}")
    metrics = run.get("metrics", [])
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        raise InvalidInput("run.metrics must be a list of objects (one per epoch or step)")
    wall = run.get("wall_time_s")
    if wall is not None and not isinstance(wall, int | float):
        raise InvalidInput(f"run.wall_time_s must be a number of seconds, got {wall!r}")
    return TrainingRun(
        task=run.get("task"),
        method=run.get("method"),
        code_version=run.get("code_version"),
        hyperparameters=run.get("hyperparameters", {}),
        seed=run.get("seed"),
        packages=run.get("packages", {}),
        hardware=run.get("hardware", {}),
        metrics=metrics,
        trainable_params=run.get("trainable_params"),
        total_params=run.get("total_params"),
        wall_time_s=float(wall) if wall is not None else None,
        started_at=_parse_time(run.get("started_at"), "started_at"),
        ended_at=_parse_time(run.get("ended_at"), "ended_at"),
        extra={k: v for k, v in run.items() if k not in _KNOWN},
    )


def _parse_time(value: Any, key: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise InvalidInput(f"run.{key} {value!r} is not an ISO 8601 timestamp") from None
    if parsed.tzinfo is None:
        raise InvalidInput(f"run.{key} {value!r} has no timezone; send UTC with '+00:00'")
    return parsed


def run_dict(row: TrainingRun) -> dict[str, Any]:
    return {
        "id": row.id,
        "task": row.task,
        "method": row.method,
        "hyperparameters": row.hyperparameters,
        "seed": row.seed,
        "code_version": row.code_version,
        "packages": row.packages,
        "hardware": row.hardware,
        "metrics": row.metrics,
        "trainable_params": row.trainable_params,
        "total_params": row.total_params,
        "wall_time_s": row.wall_time_s,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "ended_at": row.ended_at.isoformat() if row.ended_at else None,
        **({"extra": row.extra} if row.extra else {}),
    }
