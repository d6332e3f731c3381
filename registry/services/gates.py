"""Gate policies and the decision they make on a promotion's evaluation results.

A policy applies to one adapter and alias. ``*`` stands for every adapter or
every alias, and the most specific policy wins: ``name@alias``, then
``name@*``, then ``*@alias``, then ``*@*``. Without any stored policy the
built-in default applies (task's default metric, no margin, no regression).

The decision has two kinds of check, both on the promotion's split:

- margin: on the primary dataset (the request's first), the candidate beats the
  alias's current version by at least ``min_margin`` on the primary metric. It
  passes when the alias has no version yet.
- regression: on every dataset, the candidate is at most ``max_regression``
  worse than the base model on the primary metric.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db.base import utcnow
from registry.db.dialect import insert_ignore
from registry.db.models import Adapter, GatePolicy
from registry.errors import InvalidInput, NotFound
from registry.services.actors import Actor
from registry.services.audit import record_event
from registry.services.names import check_alias, check_name

log = logging.getLogger(__name__)

ANY = "*"
HIGHER_IS_BETTER = frozenset({"accuracy", "macro_f1"})
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})
METRICS = HIGHER_IS_BETTER | LOWER_IS_BETTER
# Metrics each task reports; the first is the task's default primary metric.
TASK_METRICS = {
    "seq-cls": ("accuracy", "macro_f1", "loss"),
    "causal-lm": ("loss", "perplexity"),
}
# Absolute slack in comparisons, so that 0.3 - 0.2 counts as a margin of 0.1.
FLOAT_SLACK = 1e-9


@dataclass(frozen=True)
class Policy:
    """The gate settings that apply to one promotion, and where they came from."""

    # name@alias of the stored policy ('*' for any), or "default" for the built-in one.
    scope: str
    metric: str | None
    min_margin: float
    max_regression: float
    require_approval: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_POLICY = Policy(
    scope="default", metric=None, min_margin=0.0, max_regression=0.0, require_approval=False
)


def set_gate_policy(
    session: Session,
    actor: Actor,
    *,
    adapter: str,
    alias: str,
    metric: str | None,
    min_margin: float,
    max_regression: float,
    require_approval: bool,
) -> dict[str, Any]:
    """Create or replace the policy of ``adapter`` and ``alias`` ('*' for any); needs approver."""
    actor.require("approver")
    adapter = adapter if adapter == ANY else check_name(adapter, what="adapter name")
    alias = alias if alias == ANY else check_alias(alias)
    _check_settings(metric=metric, min_margin=min_margin, max_regression=max_regression)
    if adapter != ANY and session.scalar(select(Adapter.id).where(Adapter.name == adapter)) is None:
        raise NotFound(
            f"adapter {adapter!r} not found; push a version of it first, or use '*' for a "
            "policy that covers every adapter"
        )
    row = _lock_policy_row(session, actor, adapter=adapter, alias=alias)

    row.metric = metric
    row.min_margin = min_margin
    row.max_regression = max_regression
    row.require_approval = require_approval
    row.updated_by = actor.name
    row.updated_at = utcnow()
    session.flush()
    policy = _policy_from_row(row)
    record_event(
        session,
        actor,
        "gate.set",
        entity_type="gate_policy",
        entity_id=policy.scope,
        details=policy.to_dict(),
    )
    return _policy_dict(policy, row)


def _lock_policy_row(session: Session, actor: Actor, *, adapter: str, alias: str) -> GatePolicy:
    """Create the policy row if needed (a concurrent creator wins) and lock it."""
    insert_ignore(
        session,
        GatePolicy.__table__,  # type: ignore[arg-type]
        {
            "adapter_name": adapter,
            "alias": alias,
            "metric": None,
            "min_margin": 0.0,
            "max_regression": 0.0,
            "require_approval": False,
            "updated_by": actor.name,
            "updated_at": utcnow(),
        },
        conflict_columns=["adapter_name", "alias"],
    )
    return session.scalars(
        select(GatePolicy)
        .where(GatePolicy.adapter_name == adapter, GatePolicy.alias == alias)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()


def _check_settings(*, metric: str | None, min_margin: float, max_regression: float) -> None:
    if metric is not None and metric not in METRICS:
        raise InvalidInput(
            f"unknown gate metric {metric!r}; use one of {', '.join(sorted(METRICS))}"
        )
    for option, value in (("min-margin", min_margin), ("max-regression", max_regression)):
        if not math.isfinite(value) or value < 0:
            raise InvalidInput(f"--{option} must be a finite number >= 0, got {value!r}")


def effective_policy(session: Session, *, adapter: str, alias: str) -> Policy:
    """Return the most specific stored policy for ``adapter`` and ``alias``, or the default."""
    rows = session.scalars(
        select(GatePolicy).where(
            GatePolicy.adapter_name.in_([adapter, ANY]), GatePolicy.alias.in_([alias, ANY])
        )
    ).all()
    by_scope = {(row.adapter_name, row.alias): row for row in rows}
    for key in ((adapter, alias), (adapter, ANY), (ANY, alias), (ANY, ANY)):
        if key in by_scope:
            return _policy_from_row(by_scope[key])
    return DEFAULT_POLICY


def get_gate_policy(session: Session, *, adapter: str, alias: str) -> dict[str, Any]:
    """Return the policy that a promotion of ``adapter`` to ``alias`` would use."""
    policy = effective_policy(session, adapter=adapter, alias=alias)
    return {**policy.to_dict(), "applies_to": f"{adapter}@{alias}"}


def list_gate_policies(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(select(GatePolicy).order_by(GatePolicy.adapter_name, GatePolicy.alias))
    return [_policy_dict(_policy_from_row(row), row) for row in rows]


def _policy_from_row(row: GatePolicy) -> Policy:
    return Policy(
        scope=f"{row.adapter_name}@{row.alias}",
        metric=row.metric,
        min_margin=row.min_margin,
        max_regression=row.max_regression,
        require_approval=row.require_approval,
    )


def _policy_dict(policy: Policy, row: GatePolicy) -> dict[str, Any]:
    return {
        **policy.to_dict(),
        "updated_by": row.updated_by,
        "updated_at": row.updated_at.isoformat(),
    }


def primary_metric(policy: Policy, task: str) -> str:
    """Return the policy's metric, or the task's default; InvalidInput if the task lacks it."""
    if task not in TASK_METRICS:
        raise InvalidInput(f"unknown task {task!r}; use one of {', '.join(TASK_METRICS)}")
    metric = policy.metric or TASK_METRICS[task][0]
    if metric not in TASK_METRICS[task]:
        raise InvalidInput(
            f"gate {policy.scope} uses metric {metric!r}, which {task} evaluations do not "
            f"report; set --metric to one of {', '.join(TASK_METRICS[task])}"
        )
    return metric


def improvement(metric: str, value: float, reference: float) -> float:
    """Return how much better ``value`` is than ``reference`` (negative when worse)."""
    return reference - value if metric in LOWER_IS_BETTER else value - reference


def decide(
    policy: Policy,
    *,
    task: str,
    datasets: list[str],
    candidate: dict[str, dict[str, float]],
    current: dict[str, dict[str, float]] | None,
    base: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Apply ``policy`` to metrics keyed by dataset reference; return the checks and verdict.

    ``current`` is None when the alias has no version yet. Raises InvalidInput
    when the policy's metric does not fit the task.
    """
    metric = primary_metric(policy, task)
    checks = [_margin_check(policy, metric, datasets[0], candidate, current)]
    checks += [_regression_check(policy, metric, ref, candidate, base) for ref in datasets]
    return {
        "passed": all(check["passed"] for check in checks),
        "metric": metric,
        "policy": policy.to_dict(),
        "checks": checks,
    }


def _margin_check(
    policy: Policy,
    metric: str,
    dataset: str,
    candidate: dict[str, dict[str, float]],
    current: dict[str, dict[str, float]] | None,
) -> dict[str, Any]:
    check: dict[str, Any] = {
        "name": "margin",
        "dataset": dataset,
        "metric": metric,
        "candidate": candidate[dataset].get(metric),
        "required": policy.min_margin,
    }
    if current is None:
        return {
            **check,
            "reference": None,
            "improvement": None,
            "passed": True,
            "detail": "the alias has no version yet, so there is nothing to beat",
        }
    return _compare(check, current[dataset].get(metric), policy.min_margin, "current version")


def _regression_check(
    policy: Policy,
    metric: str,
    dataset: str,
    candidate: dict[str, dict[str, float]],
    base: dict[str, dict[str, float]],
) -> dict[str, Any]:
    check: dict[str, Any] = {
        "name": "regression",
        "dataset": dataset,
        "metric": metric,
        "candidate": candidate[dataset].get(metric),
        # 0.0 - x rather than -x, so that no regression allowed reads 0, not -0.
        "required": 0.0 - policy.max_regression,
    }
    return _compare(check, base[dataset].get(metric), 0.0 - policy.max_regression, "base model")


def _compare(
    check: dict[str, Any], reference: float | None, required: float, what: str
) -> dict[str, Any]:
    value, metric = check["candidate"], check["metric"]
    if value is None:
        return {
            **check,
            "reference": reference,
            "improvement": None,
            "passed": False,
            "detail": f"the candidate's evaluation has no {metric!r}",
        }
    if reference is None:
        return {
            **check,
            "reference": None,
            "improvement": None,
            "passed": False,
            "detail": f"the {what}'s evaluation has no {metric!r}, so the gate cannot "
            "compare; use a metric that both report",
        }
    delta = improvement(metric, value, reference)
    passed = delta + FLOAT_SLACK >= required
    verb = "beats" if delta >= 0 else "trails"
    detail = (
        f"candidate {metric} {value:.4f} {verb} the {what} ({reference:.4f}) by "
        f"{abs(delta):.4f}; required improvement {required:+.4f}"
    )
    return {
        **check,
        "reference": reference,
        "improvement": delta,
        "passed": passed,
        "detail": detail,
    }
