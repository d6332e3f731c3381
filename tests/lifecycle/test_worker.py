"""The worker loop in this process against a live API: lost claims, outages, bad results."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from registry.client import RegistryClient
from tests.support.fixtures import LiveRegistry
from trainer.evaluate import EvalSettings
from trainer.worker import process_claim, run_worker

SETTINGS = EvalSettings(max_samples=6, max_length=32)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_lost_claim_does_not_end_worker(registry: LiveRegistry) -> None:
    client = registry.client
    request = client.request_promotion("chat@1", "staging", datasets=["words@1"])
    stale = client.claim_promotion("slow-worker", lease_seconds=1)
    assert stale is not None
    time.sleep(1.2)
    assert client.claim_promotion("fast-worker", lease_seconds=60) is not None

    result = process_claim(client, stale, worker="slow-worker", settings=SETTINGS, lease_seconds=1)

    assert result is None
    current = client.get_promotion(request["id"])
    assert current["state"] == "evaluating"
    assert current["claimed_by"] == "fast-worker"


def test_worker_survives_unreachable_registry() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe is closed, so every request fails to connect.
    unreachable = RegistryClient(f"http://127.0.0.1:{port}", None)
    try:
        processed = run_worker(unreachable, name="w1", once=True, settings=SETTINGS)
    finally:
        unreachable.close()
    assert processed == 0


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_changed_dataset_file_fails_request(
    registry: LiveRegistry, words_file: Path, tmp_path: Path
) -> None:
    client = registry.client
    path = Path(shutil.copy(words_file, tmp_path / "drift.jsonl"))
    client.register_dataset("drift", path, version="1")
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"text": "a row added after registration", "split": "test"}\n')
    request = client.request_promotion("chat@1", "staging", datasets=["drift@1"])

    processed = run_worker(client, name="w1", once=True, settings=SETTINGS)

    assert processed == 1
    failed = client.get_promotion(request["id"])
    assert failed["state"] == "failed"
    assert failed["attempts"] == 1
    assert "IntegrityError" in failed["error"]
    assert "drift@1" in failed["error"]
