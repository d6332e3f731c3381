"""Datasets, training runs, parents and the lineage they form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry import errors
from tests.support.fixtures import LiveRegistry
from tests.support.models import save_lora_adapter, save_tiny_llama

RUN = {
    "task": "causal-lm",
    "method": "lora",
    "seed": 7,
    "hyperparameters": {"lr": 0.001, "epochs": 1},
    "packages": {"torch": "2.13.0"},
    "hardware": {"device": "cpu"},
    "metrics": [{"epoch": 1, "train_loss": 1.5}],
    "started_at": "2026-12-04T10:00:00+00:00",
    "ended_at": "2026-12-04T10:05:00+00:00",
    "wall_time_s": 300.0,
}


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lineage")
    base = save_tiny_llama(root / "base")
    data = root / "data.jsonl"
    rows = [
        {"text": f"example {i}", "label": ["a", "b"][i % 2], "split": "train" if i < 8 else "test"}
        for i in range(10)
    ]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {
        "base": base,
        "data": data,
        "a": save_lora_adapter(base, root / "a", seed=1),
        "b": save_lora_adapter(base, root / "b", seed=2),
    }


def test_dataset_register_records_stats(
    live_registry: LiveRegistry, material: dict[str, Path]
) -> None:
    result = live_registry.client.register_dataset("toy", material["data"], upload=True)
    assert result["version"] == "1"
    assert result["row_count"] == 10
    assert result["label_set"] == ["a", "b"]
    assert result["splits"] == {"test": 2, "train": 8}
    assert result["columns"] == ["text", "label", "split"]


def test_dataset_register_conflicting_version(
    live_registry: LiveRegistry, material: dict[str, Path], tmp_path: Path
) -> None:
    live_registry.client.register_dataset("toy", material["data"], version="v1")
    other = tmp_path / "other.csv"
    other.write_text("text,label\nhello,a\n")
    with pytest.raises(errors.Conflict) as caught:
        live_registry.client.register_dataset("toy", other, version="v1")
    assert "toy@v1" in caught.value.detail


def test_dataset_download_verifies(
    live_registry: LiveRegistry, material: dict[str, Path], tmp_path: Path
) -> None:
    live_registry.client.register_dataset("toy", material["data"], upload=True)
    target = live_registry.client.download_dataset("toy", "1", tmp_path / "copy.jsonl")
    assert target.read_bytes() == material["data"].read_bytes()


def test_lineage_lists_base_dataset_run_parents(
    live_registry: LiveRegistry, material: dict[str, Path]
) -> None:
    client = live_registry.client
    client.register_base_model("tiny", material["base"], revision="abc")
    client.register_dataset("toy", material["data"])
    client.push("first", material["a"], base_model="tiny", datasets=["toy@1"], run=RUN)
    client.push(
        "second",
        material["b"],
        base_model="tiny",
        parents=[{"ref": "first@1", "relation": "finetune"}],
    )
    lineage = client.lineage("second@1")
    assert lineage["base_model"]["name"] == "tiny"
    assert lineage["base_model"]["revision"] == "abc"
    parent = lineage["parents"][0]
    assert parent["ref"] == "first@1"
    assert parent["relation"] == "finetune"
    assert parent["datasets"][0]["name"] == "toy"
    assert parent["datasets"][0]["digest"].startswith("sha256:")
    assert parent["run"]["seed"] == 7
    assert parent["run"]["metrics"] == [{"epoch": 1, "train_loss": 1.5}]


def test_push_rejects_unknown_dataset(
    live_registry: LiveRegistry, material: dict[str, Path]
) -> None:
    live_registry.client.register_base_model("tiny", material["base"])
    with pytest.raises(errors.NotFound) as caught:
        live_registry.client.push("x", material["a"], base_model="tiny", datasets=["nope@1"])
    assert "nope@1" in caught.value.detail


def test_push_rejects_run_with_bad_seed(
    live_registry: LiveRegistry, material: dict[str, Path]
) -> None:
    live_registry.client.register_base_model("tiny", material["base"])
    with pytest.raises(errors.InvalidInput) as caught:
        live_registry.client.push(
            "x", material["a"], base_model="tiny", run={**RUN, "seed": "seven"}
        )
    assert "run.seed" in caught.value.detail


def test_base_model_reregister_other_files_conflicts(
    live_registry: LiveRegistry, material: dict[str, Path], tmp_path: Path
) -> None:
    live_registry.client.register_base_model("tiny", material["base"])
    other = save_tiny_llama(tmp_path / "other", seed=5)
    with pytest.raises(errors.Conflict) as caught:
        live_registry.client.register_base_model("tiny", other)
    assert "fingerprint" in caught.value.detail
