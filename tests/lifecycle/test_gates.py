"""The gate decision on metric tables, and which stored policy applies."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from registry.db.models import Adapter, BaseModelRecord
from registry.errors import Forbidden, InvalidInput, NotFound
from registry.services.actors import LOCAL_ADMIN, Actor
from registry.services.gates import (
    DEFAULT_POLICY,
    Policy,
    decide,
    effective_policy,
    set_gate_policy,
)

DATASETS = ["words@1", "extra@1"]


def policy(**changes: object) -> Policy:
    fields = {**DEFAULT_POLICY.to_dict(), "scope": "test", **changes}
    return Policy(**fields)


def metrics(primary: float, extra: float, name: str = "accuracy") -> dict[str, dict[str, float]]:
    return {"words@1": {name: primary}, "extra@1": {name: extra}}


def check(decision: dict[str, object], name: str, dataset: str = "words@1") -> dict[str, object]:
    checks = decision["checks"]
    assert isinstance(checks, list)
    return next(c for c in checks if c["name"] == name and c["dataset"] == dataset)


def test_decide_passes_above_margin() -> None:
    decision = decide(
        policy(min_margin=0.05),
        task="seq-cls",
        datasets=DATASETS,
        candidate=metrics(0.80, 0.7),
        current=metrics(0.70, 0.7),
        base=metrics(0.3, 0.3),
    )
    assert decision["passed"] is True
    assert decision["metric"] == "accuracy"
    assert check(decision, "margin")["improvement"] == pytest.approx(0.10)


def test_decide_rejects_below_margin() -> None:
    decision = decide(
        policy(min_margin=0.05),
        task="seq-cls",
        datasets=DATASETS,
        candidate=metrics(0.72, 0.7),
        current=metrics(0.70, 0.7),
        base=metrics(0.3, 0.3),
    )
    assert decision["passed"] is False
    assert check(decision, "margin")["passed"] is False
    assert "0.7200" in str(check(decision, "margin")["detail"])


def test_decide_margin_tolerates_float_rounding() -> None:
    decision = decide(
        policy(min_margin=0.1),
        task="seq-cls",
        datasets=DATASETS,
        candidate=metrics(0.3, 0.3),
        current=metrics(0.2, 0.2),
        base=metrics(0.1, 0.1),
    )
    assert 0.3 - 0.2 < 0.1
    assert check(decision, "margin")["passed"] is True


def test_decide_loss_lower_is_better() -> None:
    decision = decide(
        policy(min_margin=0.1),
        task="causal-lm",
        datasets=DATASETS,
        candidate=metrics(1.5, 2.0, "loss"),
        current=metrics(1.8, 2.0, "loss"),
        base=metrics(2.5, 2.5, "loss"),
    )
    assert decision["metric"] == "loss"
    assert check(decision, "margin")["improvement"] == pytest.approx(0.3)
    assert decision["passed"] is True


def test_decide_without_current_version_passes_margin() -> None:
    decision = decide(
        policy(min_margin=0.5),
        task="seq-cls",
        datasets=DATASETS,
        candidate=metrics(0.6, 0.6),
        current=None,
        base=metrics(0.3, 0.3),
    )
    assert check(decision, "margin")["passed"] is True
    assert decision["passed"] is True


def test_decide_rejects_regression_on_second_dataset() -> None:
    decision = decide(
        policy(max_regression=0.02),
        task="seq-cls",
        datasets=DATASETS,
        candidate=metrics(0.9, 0.25),
        current=metrics(0.8, 0.4),
        base=metrics(0.3, 0.3),
    )
    assert check(decision, "regression", "words@1")["passed"] is True
    assert check(decision, "regression", "extra@1")["passed"] is False
    assert decision["passed"] is False


def test_decide_allows_regression_within_tolerance() -> None:
    decision = decide(
        policy(max_regression=0.1),
        task="seq-cls",
        datasets=DATASETS,
        candidate=metrics(0.9, 0.25),
        current=None,
        base=metrics(0.3, 0.3),
    )
    assert check(decision, "regression", "extra@1")["passed"] is True


def test_decide_fails_when_base_lacks_metric() -> None:
    # The zero-shot seq-cls baseline reports no loss, so a loss gate cannot compare.
    decision = decide(
        policy(metric="loss"),
        task="seq-cls",
        datasets=["words@1"],
        candidate={"words@1": {"loss": 0.5, "accuracy": 0.8}},
        current=None,
        base={"words@1": {"accuracy": 0.3}},
    )
    assert decision["passed"] is False
    assert "base model's evaluation has no 'loss'" in str(check(decision, "regression")["detail"])


def test_decide_rejects_metric_of_other_task() -> None:
    with pytest.raises(InvalidInput) as invalid:
        decide(
            policy(metric="accuracy"),
            task="causal-lm",
            datasets=["words@1"],
            candidate={"words@1": {"loss": 1.0}},
            current=None,
            base={"words@1": {"loss": 1.0}},
        )
    assert "causal-lm" in invalid.value.detail


def add_adapter_row(session: Session, name: str) -> None:
    """Insert an adapter row (with a placeholder base model) for policies to name."""
    base = BaseModelRecord(
        name=f"{name}-base",
        source_uri="file:///nonexistent",
        architecture="LlamaForCausalLM",
        fingerprint="sha256:" + "0" * 64,
        config={},
        manifest={},
        files=[],
        created_by="test",
    )
    session.add(base)
    session.flush()
    session.add(Adapter(name=name, base_model_id=base.id, created_by="test"))
    session.flush()


def test_effective_policy_prefers_specific(session: Session) -> None:
    add_adapter_row(session, "chat")
    for adapter, alias, margin in (
        ("*", "*", 0.1),
        ("*", "production", 0.2),
        ("chat", "*", 0.3),
        ("chat", "production", 0.4),
    ):
        set_gate_policy(
            session,
            LOCAL_ADMIN,
            adapter=adapter,
            alias=alias,
            metric=None,
            min_margin=margin,
            max_regression=0.0,
            require_approval=False,
        )
    assert effective_policy(session, adapter="chat", alias="production").min_margin == 0.4
    assert effective_policy(session, adapter="chat", alias="staging").min_margin == 0.3
    assert effective_policy(session, adapter="other", alias="production").min_margin == 0.2
    assert effective_policy(session, adapter="other", alias="staging").min_margin == 0.1


def test_effective_policy_default_without_rows(session: Session) -> None:
    assert effective_policy(session, adapter="chat", alias="staging") == DEFAULT_POLICY


def test_set_gate_replaces_existing(session: Session) -> None:
    add_adapter_row(session, "chat")
    for margin in (0.1, 0.25):
        set_gate_policy(
            session,
            LOCAL_ADMIN,
            adapter="chat",
            alias="staging",
            metric="accuracy",
            min_margin=margin,
            max_regression=0.0,
            require_approval=True,
        )
    result = effective_policy(session, adapter="chat", alias="staging")
    assert result.min_margin == 0.25
    assert result.require_approval is True


def test_set_gate_needs_approver(session: Session) -> None:
    with pytest.raises(Forbidden):
        set_gate_policy(
            session,
            Actor(name="w", role="writer"),
            adapter="chat",
            alias="staging",
            metric=None,
            min_margin=0.0,
            max_regression=0.0,
            require_approval=False,
        )


def test_set_gate_rejects_unknown_metric(session: Session) -> None:
    with pytest.raises(InvalidInput) as invalid:
        set_gate_policy(
            session,
            LOCAL_ADMIN,
            adapter="chat",
            alias="staging",
            metric="bleu",
            min_margin=0.0,
            max_regression=0.0,
            require_approval=False,
        )
    assert "'bleu'" in invalid.value.detail


def test_set_gate_rejects_unknown_adapter(session: Session) -> None:
    with pytest.raises(NotFound) as missing:
        set_gate_policy(
            session,
            LOCAL_ADMIN,
            adapter="no-such-adapter",
            alias="staging",
            metric=None,
            min_margin=0.0,
            max_regression=0.0,
            require_approval=False,
        )

    assert "'no-such-adapter'" in missing.value.detail
    assert "'*'" in missing.value.detail
