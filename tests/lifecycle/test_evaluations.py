"""Evaluations and merged models as registry entities, over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from registry import errors
from tests.lifecycle.conftest import record
from tests.support.fixtures import LiveRegistry

FILE = {"path": "model.safetensors", "size": 10, "digest": "sha256:" + "ab" * 32}


def evaluation(registry: LiveRegistry, **changes: Any) -> dict[str, Any]:
    digest = registry.client.get_dataset("words", "1")["digest"]
    spec = {
        "subject": {"type": "adapter_version", "ref": "chat@1"},
        "dataset": "words@1",
        "dataset_digest": digest,
        "split": "test",
        "task": "causal-lm",
        "metrics": {"loss": 1.5},
        "sample_count": 6,
        **changes,
    }
    return spec


def test_record_and_list_by_subject(registry: LiveRegistry) -> None:
    first = record(registry.client, {"type": "adapter_version", "ref": "chat@1"}, {"loss": 1.0})
    record(registry.client, {"type": "adapter_version", "ref": "chat@2"}, {"loss": 2.0})
    items = registry.client.list_evaluations(subject="chat@1")
    assert [item["id"] for item in items] == [first]
    assert items[0]["subject"] == {"type": "adapter_version", "ref": "chat@1"}
    assert items[0]["metrics"] == {"loss": 1.0}
    assert len(registry.client.list_evaluations(subject="chat")) == 2


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_record_rejects_other_dataset_digest(registry: LiveRegistry) -> None:
    spec = evaluation(registry, dataset_digest="sha256:" + "0" * 64)
    with pytest.raises(errors.InvalidInput) as invalid:
        registry.client.record_evaluation(spec)
    assert "evaluate the registered file" in invalid.value.detail


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_record_rejects_unknown_split(registry: LiveRegistry) -> None:
    with pytest.raises(errors.InvalidInput) as invalid:
        registry.client.record_evaluation(evaluation(registry, split="validation"))
    assert "no split 'validation'" in invalid.value.detail


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_record_rejects_unknown_promotion(registry: LiveRegistry) -> None:
    with pytest.raises(errors.NotFound):
        registry.client.record_evaluation(evaluation(registry, promotion_request_id=999))


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_record_rejects_bad_metric_name(registry: LiveRegistry) -> None:
    with pytest.raises(errors.InvalidInput) as invalid:
        registry.client.record_evaluation(evaluation(registry, metrics={"Loss!": 1.0}))
    assert "'Loss!'" in invalid.value.detail


def test_base_evaluation_found_in_cache(registry: LiveRegistry) -> None:
    client = registry.client
    settings = {"max_length": 32, "max_samples": 6}
    lookup: dict[str, Any] = {
        "base_model": "char-llama",
        "dataset": "words@1",
        "split": "test",
        "metrics": ["loss", "perplexity"],
        "baseline": None,
        "settings": settings,
    }
    assert client.find_cached_evaluation(**lookup) is None
    stored = client.record_evaluation(
        evaluation(
            registry,
            subject={"type": "base_model", "ref": "char-llama"},
            metrics={"loss": 2.0, "perplexity": 7.4},
            settings=settings,
        )
    )
    found = client.find_cached_evaluation(**lookup)
    assert found is not None
    assert found["id"] == stored["id"]
    assert client.find_cached_evaluation(**{**lookup, "settings": {"max_length": 64}}) is None


def test_merged_model_registered_with_parents(registry: LiveRegistry) -> None:
    spec = {
        "name": "chat-merged",
        "parents": [{"ref": "chat@1", "weight": 1.0}],
        "method": "merge_and_unload",
        "dtype": "float32",
        "max_abs_diff": 1e-6,
        "tolerance": 1e-4,
        "files": [FILE],
    }
    merged = registry.client.register_merged_model(spec)
    assert merged["base_model"]["name"] == "char-llama"
    assert [parent["ref"] for parent in merged["parents"]] == ["chat@1"]
    with pytest.raises(errors.Conflict):
        registry.client.register_merged_model(spec)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_merged_model_above_tolerance_rejected(registry: LiveRegistry) -> None:
    spec = {
        "name": "bad-merge",
        "parents": [{"ref": "chat@1"}],
        "method": "merge_and_unload",
        "dtype": "float32",
        "max_abs_diff": 0.5,
        "tolerance": 1e-4,
        "files": [FILE],
    }
    with pytest.raises(errors.InvalidInput) as invalid:
        registry.client.register_merged_model(spec)
    assert "above the tolerance" in invalid.value.detail
