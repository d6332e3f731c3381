"""Dataset files: location, digest check, splits, tokenization and padding."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from registry.errors import IntegrityError, InvalidInput, NotFound
from tests.trainer.builders import dataset_record, write_jsonl
from trainer.data import (
    IGNORE_INDEX,
    Example,
    collate,
    encode_causal_lm,
    encode_classification,
    label_names,
    locate_dataset_file,
    parse_dataset_ref,
    read_split,
    verify_dataset_file,
)

ROWS = [
    {"text": "the soup is cold", "label": "food", "split": "train"},
    {"text": "the court is in session", "label": "law", "split": "train"},
    {"text": "a fine stew", "label": "food", "split": "validation"},
]


@pytest.fixture
def jsonl_dataset(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "rows.jsonl", ROWS)


def test_parse_dataset_ref_valid() -> None:
    assert parse_dataset_ref("fortunes@2") == ("fortunes", "2")


@pytest.mark.parametrize("ref", ["fortunes", "@1", "fortunes@", "a@b@c"])
def test_parse_dataset_ref_rejects(ref: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_dataset_ref(ref)

    assert repr(ref) in raised.value.detail


def test_locate_dataset_file_uri(jsonl_dataset: Path, tmp_path: Path) -> None:
    record = dataset_record(jsonl_dataset, name="rows")

    assert locate_dataset_file(record, client=None, cache_dir=tmp_path) == jsonl_dataset


def test_locate_dataset_file_plain_path(jsonl_dataset: Path, tmp_path: Path) -> None:
    record = {**dataset_record(jsonl_dataset, name="rows"), "uri": str(jsonl_dataset)}

    assert locate_dataset_file(record, client=None, cache_dir=tmp_path) == jsonl_dataset


def test_locate_dataset_file_missing_not_uploaded(jsonl_dataset: Path, tmp_path: Path) -> None:
    record = {**dataset_record(jsonl_dataset, name="rows"), "uri": "file:///absent/rows.jsonl"}

    with pytest.raises(NotFound) as raised:
        locate_dataset_file(record, client=None, cache_dir=tmp_path)

    assert "rows@1" in raised.value.detail
    assert "--upload" in raised.value.detail


def test_verify_dataset_file_matches(jsonl_dataset: Path) -> None:
    verify_dataset_file(jsonl_dataset, dataset_record(jsonl_dataset, name="rows"))


def test_verify_dataset_file_changed_raises(jsonl_dataset: Path) -> None:
    record = dataset_record(jsonl_dataset, name="rows")
    with jsonl_dataset.open("a", encoding="utf-8") as handle:
        handle.write('{"text": "added later", "label": "law", "split": "train"}\n')

    with pytest.raises(IntegrityError) as raised:
        verify_dataset_file(jsonl_dataset, record)

    assert record["digest"] in raised.value.detail
    assert "rows@1" in raised.value.detail


def test_verify_dataset_file_accepts_bare_sha256(jsonl_dataset: Path) -> None:
    record = dataset_record(jsonl_dataset, name="rows")
    record = {**record, "digest": None, "sha256": record["digest"].removeprefix("sha256:")}

    verify_dataset_file(jsonl_dataset, record)


def test_read_split_filters_by_split_column(jsonl_dataset: Path) -> None:
    record = dataset_record(jsonl_dataset, name="rows")

    train = read_split(jsonl_dataset, record, split="train")
    validation = read_split(jsonl_dataset, record, split="validation")

    assert [row["text"] for row in train] == ["the soup is cold", "the court is in session"]
    assert [row["text"] for row in validation] == ["a fine stew"]


def test_read_split_unknown_split_lists_known(jsonl_dataset: Path) -> None:
    record = dataset_record(jsonl_dataset, name="rows")

    with pytest.raises(InvalidInput) as raised:
        read_split(jsonl_dataset, record, split="test")

    assert "'test'" in raised.value.detail
    assert "['train', 'validation']" in raised.value.detail


def test_read_split_without_split_column_is_train(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows({"text": row["text"], "label": row["label"]} for row in ROWS)
    record = dataset_record(path, name="csv-rows")

    rows = read_split(path, record, split="train")

    assert len(rows) == 3
    assert rows[2] == {"text": "a fine stew", "label": "food"}


def test_label_names_follow_label_set(jsonl_dataset: Path) -> None:
    assert label_names(dataset_record(jsonl_dataset, name="rows")) == ["food", "law"]


def test_label_names_missing_label_set_raises() -> None:
    with pytest.raises(InvalidInput) as raised:
        label_names({"name": "texts", "version": "1", "label_set": None})

    assert "--task causal-lm" in raised.value.detail


def test_encode_classification_ids_and_truncation(tiny_bert: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rows: list[dict[str, Any]] = [{"text": "the soup is cold " * 20, "label": "law"}]

    examples = encode_classification(rows, tokenizer, labels=["food", "law"], max_length=8)

    assert examples[0].labels == 1
    assert len(examples[0].input_ids) == 8
    assert examples[0].input_ids[0] == tokenizer.cls_token_id


def test_encode_classification_unknown_label_raises(tiny_bert: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    rows = [{"text": "a", "label": "food"}, {"text": "b", "label": "sports"}]

    with pytest.raises(InvalidInput) as raised:
        encode_classification(rows, tokenizer, labels=["food", "law"], max_length=8)

    assert "row 2 has label 'sports'" in raised.value.detail


def test_encode_classification_missing_text_raises(tiny_bert: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)

    with pytest.raises(InvalidInput) as raised:
        encode_classification([{"label": "food"}], tokenizer, labels=["food"], max_length=8)

    assert "row 1 has no 'text' column" in raised.value.detail


def test_encode_causal_lm_masks_prompt(char_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(char_llama)
    rows = [{"prompt": "say hi:", "completion": " hi"}]

    (example,) = encode_causal_lm(rows, tokenizer, max_length=64)
    labels = example.labels
    assert isinstance(labels, list)
    prompt_length = 1 + len("say hi:")  # <s> and one id per character

    assert labels[:prompt_length] == [IGNORE_INDEX] * prompt_length
    assert labels[prompt_length:] == example.input_ids[prompt_length:]
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example.input_ids[prompt_length:-1]) == " hi"


def test_encode_causal_lm_text_trains_every_token(char_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(char_llama)

    (example,) = encode_causal_lm([{"text": "abc"}], tokenizer, max_length=64)

    assert example.labels == example.input_ids
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_encode_causal_lm_drops_truncated_completion(char_llama: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(char_llama)
    rows = [{"prompt": "a long prompt", "completion": "x"}, {"prompt": "p", "completion": "y"}]

    examples = encode_causal_lm(rows, tokenizer, max_length=5)

    assert len(examples) == 1
    assert len(examples[0].input_ids) <= 5


def test_collate_pads_tokens_and_labels() -> None:
    examples = [Example(input_ids=[5, 6, 7], labels=[-100, 6, 7]), Example([8], labels=[8])]

    batch = collate(examples, pad_token_id=0)

    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_collate_class_labels() -> None:
    batch = collate([Example([1, 2], labels=3), Example([4], labels=0)], pad_token_id=0)

    assert torch.equal(batch["labels"], torch.tensor([3, 0]))
    assert batch["input_ids"].shape == (2, 2)
