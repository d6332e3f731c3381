"""Fixtures of the lifecycle tests: a tiny causal LM, its adapters, a dataset, a live registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.client import RegistryClient
from tests.support.fixtures import LiveRegistry
from tests.support.models import save_lora_adapter
from tests.trainer.builders import save_char_llama

WORDS = ["apple", "bread", "cheese", "dates", "eggs", "figs", "grapes", "honey"]


@pytest.fixture(autouse=True)
def _offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep every test offline and give it its own cache home."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ADAPTERREG_HOME", str(tmp_path / "adapterreg-home"))
    yield


@pytest.fixture(scope="session")
def char_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_char_llama(tmp_path_factory.mktemp("char-llama"))


@pytest.fixture(scope="session")
def adapters(char_base: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two LoRA adapters of the tiny LLaMA with different random weights."""
    root = tmp_path_factory.mktemp("adapters")
    return [save_lora_adapter(char_base, root / f"v{seed}", seed=seed) for seed in (1, 2)]


@pytest.fixture(scope="session")
def words_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A causal-LM dataset with train and test splits of short sentences."""
    rows = [
        {"text": f"I like {word} and {other}.", "split": split}
        for split, words in (("train", WORDS), ("test", WORDS[:6]))
        for word, other in zip(words, reversed(words), strict=True)
    ]
    path = tmp_path_factory.mktemp("words") / "words.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def registry(
    live_registry: LiveRegistry, char_base: Path, adapters: list[Path], words_file: Path
) -> LiveRegistry:
    """A live registry with base model char-llama, dataset words@1, chat@1 and chat@2."""
    client = live_registry.client
    client.register_base_model("char-llama", char_base)
    client.register_dataset("words", words_file, version="1")
    for adapter in adapters:
        client.push("chat", adapter, base_model="char-llama", datasets=["words@1"])
    return live_registry


def record(
    client: RegistryClient,
    subject: dict[str, str],
    metrics: dict[str, float],
    *,
    request_id: int | None = None,
    dataset: str = "words@1",
) -> int:
    """Record an evaluation with the given metrics on the test split; return its id."""
    name, version = dataset.split("@")
    digest = client.get_dataset(name, version)["digest"]
    result: dict[str, Any] = client.record_evaluation(
        {
            "subject": subject,
            "dataset": dataset,
            "dataset_digest": digest,
            "split": "test",
            "task": "causal-lm",
            "metrics": metrics,
            "sample_count": 6,
            "promotion_request_id": request_id,
        }
    )
    return int(result["id"])


def evaluate_as_worker(
    client: RegistryClient,
    worker: str,
    *,
    candidate_loss: float,
    base_loss: float,
    current_loss: float | None = None,
) -> dict[str, Any]:
    """Claim the next request and post evaluations with the given losses, as a worker would."""
    claim = client.claim_promotion(worker, lease_seconds=60)
    assert claim is not None, "a request should be waiting"
    ids = [
        record(
            client,
            {"type": "adapter_version", "ref": claim["candidate"]},
            {"loss": candidate_loss},
            request_id=claim["id"],
        ),
        record(
            client,
            {"type": "base_model", "ref": "char-llama"},
            {"loss": base_loss},
            request_id=claim["id"],
        ),
    ]
    if claim["current"] is not None:
        assert current_loss is not None, f"the alias is at {claim['current']}"
        ids.append(
            record(
                client,
                {"type": "adapter_version", "ref": claim["current"]},
                {"loss": current_loss},
                request_id=claim["id"],
            )
        )
    return client.submit_promotion_results(claim["id"], worker, ids)
