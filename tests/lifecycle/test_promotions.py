"""Promotion requests over real HTTP: gate, approval, claims, leases, rollback, outbox."""

from __future__ import annotations

import threading
import time

import pytest

from registry import errors
from tests.lifecycle.conftest import evaluate_as_worker, record
from tests.support.fixtures import LiveRegistry


def test_passing_gate_promotes_unprotected_alias(registry: LiveRegistry) -> None:
    client = registry.client
    request = client.request_promotion("chat@1", "staging", datasets=["words@1"])
    assert request["state"] == "requested"
    result = evaluate_as_worker(client, "w1", candidate_loss=2.0, base_loss=2.5)
    assert result["state"] == "promoted"
    assert result["decision"]["passed"] is True
    assert client.resolve("chat@staging")["version"] == 1


def test_failing_gate_rejects_with_numbers(registry: LiveRegistry) -> None:
    client = registry.client
    client.set_gate("chat", "staging", metric="loss", min_margin=0.5)
    client.request_promotion("chat@1", "staging", datasets=["words@1"])
    evaluate_as_worker(client, "w1", candidate_loss=2.0, base_loss=2.5)
    client.request_promotion("chat@2", "staging", datasets=["words@1"])
    result = evaluate_as_worker(client, "w1", candidate_loss=1.8, base_loss=2.5, current_loss=2.0)
    assert result["state"] == "rejected"
    margin = next(c for c in result["decision"]["checks"] if c["name"] == "margin")
    assert margin["passed"] is False
    assert margin["candidate"] == pytest.approx(1.8)
    assert margin["reference"] == pytest.approx(2.0)
    assert margin["improvement"] == pytest.approx(0.2)
    assert client.resolve("chat@staging")["version"] == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_regression_below_base_rejects(registry: LiveRegistry) -> None:
    client = registry.client
    client.request_promotion("chat@1", "staging", datasets=["words@1"])
    result = evaluate_as_worker(client, "w1", candidate_loss=3.0, base_loss=2.5)
    regression = next(c for c in result["decision"]["checks"] if c["name"] == "regression")
    assert result["state"] == "rejected"
    assert regression["passed"] is False


def test_protected_alias_needs_other_approver(registry: LiveRegistry) -> None:
    admin = registry.client.create_token("admin", "admin")["token"]
    alice = registry.client_for(
        registry.client_for(admin).create_token("alice", "approver")["token"]
    )
    bob = registry.client_for(registry.client_for(admin).create_token("bob", "approver")["token"])
    request = alice.request_promotion("chat@1", "production", datasets=["words@1"])
    result = evaluate_as_worker(alice, "w1", candidate_loss=2.0, base_loss=2.5)
    assert result["state"] == "awaiting_approval"
    with pytest.raises(errors.Forbidden) as refused:
        alice.approve_promotion(request["id"])
    assert "'alice' requested promotion" in refused.value.detail
    assert alice.get_promotion(request["id"])["state"] == "awaiting_approval"
    approved = bob.approve_promotion(request["id"], reason="looks good")
    assert approved["state"] == "promoted"
    assert approved["decided_by"] == "bob"
    assert bob.resolve("chat@production")["version"] == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_writer_cannot_approve(registry: LiveRegistry) -> None:
    admin = registry.client_for(registry.client.create_token("admin", "admin")["token"])
    carol = registry.client_for(admin.create_token("carol", "writer")["token"])
    request = admin.request_promotion("chat@1", "production", datasets=["words@1"])
    evaluate_as_worker(admin, "w1", candidate_loss=2.0, base_loss=2.5)
    with pytest.raises(errors.Forbidden):
        carol.approve_promotion(request["id"])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_history_shows_evaluations_of_move(registry: LiveRegistry) -> None:
    client = registry.client
    client.request_promotion("chat@1", "staging", datasets=["words@1"])
    evaluate_as_worker(client, "w1", candidate_loss=2.0, base_loss=2.5)
    (move,) = client.alias_history("chat", "staging")
    subjects = {item["subject"]["ref"] for item in move["evaluations"]}
    assert subjects == {"chat@1", "char-llama"}
    assert move["evidence"]["gate"]["passed"] is True
    assert move["promotion_request_id"] is not None


def test_rollback_after_two_promotions(registry: LiveRegistry) -> None:
    client = registry.client
    client.request_promotion("chat@1", "staging", datasets=["words@1"])
    evaluate_as_worker(client, "w1", candidate_loss=2.0, base_loss=2.5)
    client.request_promotion("chat@2", "staging", datasets=["words@1"])
    second = evaluate_as_worker(client, "w1", candidate_loss=1.5, base_loss=2.5, current_loss=2.0)
    assert second["state"] == "promoted"
    assert client.resolve("chat@staging")["version"] == 2
    rolled = client.rollback("chat", "staging", reason="v2 misbehaves in production traffic")
    assert rolled["version"] == 1
    history = client.alias_history("chat", "staging")
    assert [move["to_version"] for move in history] == [1, 2, 1]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_second_open_request_for_alias_conflicts(registry: LiveRegistry) -> None:
    client = registry.client
    first = client.request_promotion("chat@1", "staging", datasets=["words@1"])
    with pytest.raises(errors.Conflict) as conflict:
        client.request_promotion("chat@2", "staging", datasets=["words@1"])
    assert f"promotion {first['id']}" in conflict.value.detail


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_missing_split_rejected_at_request(registry: LiveRegistry) -> None:
    with pytest.raises(errors.InvalidInput) as invalid:
        registry.client.request_promotion(
            "chat@1", "staging", datasets=["words@1"], split="validation"
        )
    assert "'validation'" in invalid.value.detail


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_incomplete_results_rejected(registry: LiveRegistry) -> None:
    client = registry.client
    client.request_promotion("chat@1", "staging", datasets=["words@1"])
    claim = client.claim_promotion("w1")
    assert claim is not None
    only_candidate = record(client, {"type": "adapter_version", "ref": "chat@1"}, {"loss": 1.0})
    with pytest.raises(errors.InvalidInput) as invalid:
        client.submit_promotion_results(claim["id"], "w1", [only_candidate])
    assert "base on words@1" in invalid.value.detail


def test_two_workers_never_claim_same_request(registry: LiveRegistry) -> None:
    client = registry.client
    aliases = [f"lane{index}" for index in range(8)]
    expected = {
        client.request_promotion("chat@1", alias, datasets=["words@1"])["id"] for alias in aliases
    }
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def claim_all(worker: str) -> None:
        own = registry.client_for(None)
        start.wait()
        while (claim := own.claim_promotion(worker)) is not None:
            claimed[worker].append(claim["id"])
        own.close()

    threads = [threading.Thread(target=claim_all, args=(worker,)) for worker in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    all_claims = claimed["a"] + claimed["b"]
    assert sorted(all_claims) == sorted(expected)
    assert len(set(all_claims)) == len(all_claims)


def test_expired_lease_is_reclaimed(registry: LiveRegistry) -> None:
    client = registry.client
    request = client.request_promotion("chat@1", "staging", datasets=["words@1"])
    first = client.claim_promotion("dead-worker", lease_seconds=1)
    assert first is not None
    assert client.claim_promotion("w2") is None
    time.sleep(1.2)
    second = client.claim_promotion("w2")
    assert second is not None
    assert second["id"] == request["id"]
    assert second["attempts"] == 2
    with pytest.raises(errors.Conflict):
        client.renew_promotion_lease(request["id"], "dead-worker")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_worker_error_retries_then_fails(registry: LiveRegistry) -> None:
    client = registry.client
    request = client.request_promotion("chat@1", "staging", datasets=["words@1"])
    states = []
    for _ in range(3):
        claim = client.claim_promotion("w1")
        assert claim is not None
        states.append(client.fail_promotion(claim["id"], "w1", error="out of memory")["state"])
    assert states == ["requested", "requested", "failed"]
    assert client.get_promotion(request["id"])["error"] == "out of memory"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_transitions_audited_and_in_outbox(registry: LiveRegistry) -> None:
    client = registry.client
    request = client.request_promotion("chat@1", "staging", datasets=["words@1"])
    evaluate_as_worker(client, "w1", candidate_loss=2.0, base_loss=2.5)
    details = client.get_promotion(request["id"])
    actions = [event["action"] for event in details["events"]]
    assert actions == [
        "promotion.requested",
        "promotion.evaluating",
        "promotion.approved",
        "promotion.promoted",
    ]
    outbox = [event["type"] for event in client.list_outbox_events()]
    assert outbox == [
        "promotion.requested",
        "promotion.evaluating",
        "promotion.approved",
        "alias.moved",
        "promotion.promoted",
    ]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_alias_moved_after_claim_requeues(registry: LiveRegistry) -> None:
    client = registry.client
    request = client.request_promotion("chat@1", "staging", datasets=["words@1"])
    claim = client.claim_promotion("w1")
    assert claim is not None
    assert claim["current"] is None
    client.set_alias("chat", "staging", 2, reason="hotfix")
    ids = [
        record(client, {"type": "adapter_version", "ref": "chat@1"}, {"loss": 1.0}),
        record(client, {"type": "base_model", "ref": "char-llama"}, {"loss": 2.0}),
    ]
    result = client.submit_promotion_results(request["id"], "w1", ids)
    assert result["state"] == "requested"
    assert "alias moved" in result["error"]
    again = client.claim_promotion("w2")
    assert again is not None
    assert again["current"] == "chat@2"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_request_for_current_version_conflicts(registry: LiveRegistry) -> None:
    client = registry.client
    client.set_alias("chat", "staging", 1)
    with pytest.raises(errors.Conflict) as conflict:
        client.request_promotion("chat@1", "staging", datasets=["words@1"])
    assert "already points at version 1" in conflict.value.detail
