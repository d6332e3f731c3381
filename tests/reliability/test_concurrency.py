"""Concurrent pushes, alias moves, promotion requests and approvals on one adapter."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from registry import errors
from registry.client import RegistryClient
from registry.db.models import Adapter, AdapterVersion, VersionFile
from tests.reliability.conftest import make_variants
from tests.support.fixtures import LiveRegistry

PUSHES = 64
MOVES = 16


@pytest.fixture(scope="module")
def push_variants(tiny_lora: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return make_variants(tiny_lora, tmp_path_factory.mktemp("push-variants"), PUSHES)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("eval-data") / "eval.jsonl"
    rows = [{"text": f"row {index}", "split": "test"} for index in range(4)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_concurrently(
    count: int, task: Callable[[int], Any]
) -> list[tuple[Any, errors.RegistryError | None]]:
    """Run ``task(0..count-1)`` on ``count`` threads at once; return (result, error) pairs."""

    def guarded(index: int) -> tuple[Any, errors.RegistryError | None]:
        try:
            return task(index), None
        except errors.RegistryError as error:
            return None, error

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(guarded, range(count)))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_64_concurrent_pushes_get_consecutive_versions(
    live_registry: LiveRegistry, tiny_base: Path, push_variants: list[Path]
) -> None:
    live_registry.client.register_base_model("tiny", tiny_base)

    def push(index: int) -> dict[str, Any]:
        with live_registry.client_for(None) as client:
            return client.push("busy", push_variants[index], base_model="tiny")

    outcomes = run_concurrently(PUSHES, push)

    assert [str(error) for _, error in outcomes if error is not None] == []
    results = [result for result, _ in outcomes]
    assert sorted(result["version"] for result in results) == list(range(1, PUSHES + 1))
    assert all(result["created"] for result in results)
    assert len({result["digest"] for result in results}) == PUSHES
    with live_registry.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(AdapterVersion)) == PUSHES
        assert connection.scalar(select(Adapter.last_version)) == PUSHES
        assert connection.scalar(select(func.count()).select_from(VersionFile)) == 2 * PUSHES


def assert_history_is_a_chain(history: list[dict[str, Any]]) -> None:
    """Each move must start where the move before it ended: no move was lost or overwritten."""
    assert history[0]["from_version"] is None
    for previous, move in itertools.pairwise(history):
        assert move["from_version"] == previous["to_version"], (previous, move)


def test_concurrent_alias_moves_keep_one_chain(
    live_registry: LiveRegistry, tiny_base: Path, push_variants: list[Path]
) -> None:
    client = live_registry.client
    client.register_base_model("tiny", tiny_base)
    for directory in push_variants[:MOVES]:
        client.push("busy", directory, base_model="tiny")

    def move(index: int) -> dict[str, Any]:
        with live_registry.client_for(None) as mover:
            return mover.set_alias("busy", "staging", index + 1, reason=f"move {index}")

    outcomes = run_concurrently(MOVES, move)

    assert [str(error) for _, error in outcomes if error is not None] == []
    history = client.alias_history("busy", "staging")
    assert len(history) == MOVES
    assert all(result["moved"] for result, _ in outcomes)
    assert sorted(move["to_version"] for move in history) == list(range(1, MOVES + 1))
    assert_history_is_a_chain(history)
    assert client.resolve("busy@staging")["version"] == history[-1]["to_version"]


def open_clients(registry: LiveRegistry) -> dict[str, RegistryClient]:
    """Create tokens for a requester, an approver and a worker, ending open access."""
    admin = registry.client_for(registry.client.create_token("admin", "admin")["token"])
    roles = {"alice": "writer", "bob": "approver", "worker": "writer"}
    return {
        name: registry.client_for(admin.create_token(name, role)["token"])
        for name, role in roles.items()
    }


def evaluate_and_submit(worker: RegistryClient, dataset: dict[str, Any]) -> dict[str, Any]:
    """Claim the waiting request and post evaluations in which the candidate beats the base."""
    claim = worker.claim_promotion("w1", lease_seconds=60)
    assert claim is not None
    subjects = [
        ({"type": "adapter_version", "ref": claim["candidate"]}, 1.0),
        ({"type": "base_model", "ref": "tiny"}, 2.0),
    ]
    if claim["current"] is not None:
        subjects.append(({"type": "adapter_version", "ref": claim["current"]}, 1.5))
    ids = [
        worker.record_evaluation(
            {
                "subject": subject,
                "dataset": f"{dataset['name']}@{dataset['version']}",
                "dataset_digest": dataset["digest"],
                "split": "test",
                "task": "causal-lm",
                "metrics": {"loss": loss},
                "sample_count": 4,
                "promotion_request_id": claim["id"],
            }
        )["id"]
        for subject, loss in subjects
    ]
    return worker.submit_promotion_results(claim["id"], "w1", ids)


def test_concurrent_promotion_requests_open_one(
    live_registry: LiveRegistry, tiny_base: Path, push_variants: list[Path], eval_data: Path
) -> None:
    client = live_registry.client
    client.register_base_model("tiny", tiny_base)
    client.register_dataset("eval", eval_data, version="1")
    for directory in push_variants[:MOVES]:
        client.push("busy", directory, base_model="tiny")

    def request(index: int) -> dict[str, Any]:
        with live_registry.client_for(None) as requester:
            return requester.request_promotion(
                f"busy@{index + 1}", "production", datasets=["eval@1"]
            )

    outcomes = run_concurrently(MOVES, request)

    opened = [result for result, error in outcomes if error is None]
    refused = [error for _, error in outcomes if error is not None]
    assert len(opened) == 1
    assert len(refused) == MOVES - 1
    assert all(isinstance(error, errors.Conflict) for error in refused)
    assert len(client.list_promotions(adapter="busy", state="requested")) == 1


def test_concurrent_approvals_move_alias_once(
    live_registry: LiveRegistry, tiny_base: Path, push_variants: list[Path], eval_data: Path
) -> None:
    client = live_registry.client
    client.register_base_model("tiny", tiny_base)
    dataset = client.register_dataset("eval", eval_data, version="1")
    client.push("busy", push_variants[0], base_model="tiny")
    users = open_clients(live_registry)
    request = users["alice"].request_promotion("busy@1", "production", datasets=["eval@1"])
    assert evaluate_and_submit(users["worker"], dataset)["state"] == "awaiting_approval"

    def approve(_index: int) -> dict[str, Any]:
        with live_registry.client_for(None) as anonymous:
            anonymous._http.headers.update(users["bob"]._http.headers)
            return anonymous.approve_promotion(request["id"], reason="ship it")

    outcomes = run_concurrently(MOVES, approve)

    approved = [result for result, error in outcomes if error is None]
    refused = [error for _, error in outcomes if error is not None]
    assert [result["state"] for result in approved] == ["promoted"]
    assert all(isinstance(error, errors.Conflict) for error in refused)
    history = users["bob"].alias_history("busy", "production")
    assert len(history) == 1
    assert history[0]["promotion_request_id"] == request["id"]
    assert users["bob"].resolve("busy@production")["version"] == 1
