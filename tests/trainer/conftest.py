"""Fixtures of the trainer tests: the fortunes dataset, tiny models and their records."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.builders import (
    base_record,
    dataset_record,
    read_jsonl,
    save_char_llama,
    save_tiny_bert,
    write_jsonl,
)
from trainer.fortunes import FORTUNES_DIR, build_fortunes_dataset

# Session-scoped fixtures load models too, before any per-test environment applies.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Rows per label and split in the small classification dataset of the fast tests.
SMALL_PER_LABEL = {"train": 12, "validation": 4}


@pytest.fixture(autouse=True)
def _offline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep every test offline and give it its own cache and output home."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ADAPTERREG_HOME", str(tmp_path / "adapterreg-home"))
    yield


@pytest.fixture(scope="session")
def fortunes_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not FORTUNES_DIR.is_dir():
        pytest.skip("the fortunes package is not installed: apt-get install fortunes")
    path = tmp_path_factory.mktemp("fortunes") / "fortunes.jsonl"
    build_fortunes_dataset(path)
    return path


@pytest.fixture(scope="session")
def small_classification(fortunes_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first few fortunes of each topic and split: 96 train and 32 validation rows."""
    taken: dict[tuple[str, str], int] = {}
    rows: list[dict[str, Any]] = []
    for row in read_jsonl(fortunes_file):
        key = (row["label"], row["split"])
        if row["split"] in SMALL_PER_LABEL and taken.get(key, 0) < SMALL_PER_LABEL[row["split"]]:
            taken[key] = taken.get(key, 0) + 1
            rows.append(row)
    return write_jsonl(tmp_path_factory.mktemp("small") / "small.jsonl", rows)


@pytest.fixture(scope="session")
def tiny_bert(small_classification: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [row["text"] for row in read_jsonl(small_classification)]
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), texts)


@pytest.fixture(scope="session")
def char_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_char_llama(tmp_path_factory.mktemp("char-llama"))


@pytest.fixture(scope="session")
def causal_rows() -> list[dict[str, Any]]:
    """Prompt/completion pairs with one easy rule to learn: the completion repeats a word."""
    words = ["apple", "bread", "cheese", "dates", "eggs", "figs", "grapes", "honey"]
    rows = []
    for index, word in enumerate(words * 4):
        split = "validation" if index % 8 == 0 else "train"
        rows.append({"prompt": f"say {word}:", "completion": f" {word}", "split": split})
    return rows


@pytest.fixture(scope="session")
def causal_dataset(
    causal_rows: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("causal") / "causal.jsonl", causal_rows)


@pytest.fixture(scope="session")
def bert_record(tiny_bert: Path) -> dict[str, Any]:
    return base_record(tiny_bert, name="tiny-bert")


@pytest.fixture(scope="session")
def llama_record(char_llama: Path) -> dict[str, Any]:
    return base_record(char_llama, name="char-llama")


@pytest.fixture(scope="session")
def small_record(small_classification: Path) -> dict[str, Any]:
    return dataset_record(small_classification, name="small-fortunes")


@pytest.fixture(scope="session")
def causal_record(causal_dataset: Path) -> dict[str, Any]:
    return dataset_record(causal_dataset, name="say-words")
