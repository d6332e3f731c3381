"""Request bodies of the lifecycle API: evaluations, merges, gates, promotions."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from registry.api.schemas import FileEntryIn, Strict


class SubjectIn(Strict):
    type: str = Field(description="base_model, adapter_version or merged_model")
    ref: str = Field(description="Base model name, name@version, or merged model name")


class EvaluationIn(Strict):
    subject: SubjectIn
    dataset: str = Field(description="NAME@VERSION of the dataset")
    dataset_digest: str = Field(description="sha256 of the file the evaluator read")
    split: str
    task: str = Field(description="seq-cls or causal-lm")
    metrics: dict[str, float]
    sample_count: int = Field(ge=1)
    baseline: str | None = Field(
        default=None, description="How a base model without a head of its own was run"
    )
    settings: dict[str, Any] = Field(default_factory=dict)
    promotion_request_id: int | None = None


class CachedEvaluationIn(Strict):
    base_model: str
    dataset: str
    split: str
    metrics: list[str]
    baseline: str | None = None
    settings: dict[str, Any] = Field(default_factory=dict)


class MergedParentIn(Strict):
    ref: str = Field(description="name@version of an adapter version folded in")
    weight: float | None = None


class MergedModelIn(Strict):
    name: str
    parents: list[MergedParentIn] = Field(min_length=1)
    method: str
    dtype: str
    max_abs_diff: float | None = Field(default=None, ge=0)
    tolerance: float | None = Field(default=None, ge=0)
    files: list[FileEntryIn]
    uploaded: bool = False
    details: dict[str, Any] = Field(default_factory=dict)


class GateIn(Strict):
    metric: str | None = Field(default=None, description="Primary metric; null: task default")
    min_margin: float = Field(default=0.0, ge=0)
    max_regression: float = Field(default=0.0, ge=0)
    require_approval: bool = False


class PromotionIn(Strict):
    ref: str = Field(description="name@version of the candidate")
    alias: str
    datasets: list[str] = Field(default_factory=list, description="NAME@VERSION; first is primary")
    split: str = "test"
    reason: str | None = None


class ClaimIn(Strict):
    worker: str = Field(description="Name of the claiming worker, unique per process")
    lease_seconds: int = Field(default=600, ge=1)
    request_id: int | None = Field(default=None, description="Claim only this request")


class LeaseIn(Strict):
    worker: str
    lease_seconds: int = Field(default=600, ge=1)


class ResultsIn(Strict):
    worker: str
    evaluation_ids: list[int] = Field(min_length=1)


class FailIn(Strict):
    worker: str
    error: str
    retry: bool = True


class ApproveIn(Strict):
    reason: str | None = None


class RejectIn(Strict):
    reason: str = Field(min_length=1)
