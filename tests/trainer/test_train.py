"""The training loop on tiny models: outputs, run record, determinism, interrupt and resume."""

from __future__ import annotations

import json
import signal
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from registry.errors import IntegrityError, InvalidInput
from tests.trainer.builders import directory_bytes, read_jsonl
from trainer.checkpoint import TrainingState, sort_config_sets
from trainer.methods import MethodOptions
from trainer.train import (
    TrainConfig,
    TrainingInterrupted,
    TrainResult,
    epoch_batches,
    train_adapter,
)

EPOCHS = 2
BATCH_SIZE = 8
STEPS_PER_EPOCH = 12  # 96 training rows / 8


def _bert_config(output_dir: Path, **overrides: Any) -> TrainConfig:
    config = TrainConfig(
        base_model="tiny-bert",
        dataset="small-fortunes@1",
        adapter="topics",
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        max_length=32,
        lr=1e-2,
        seed=7,
        quiet=True,
        output_dir=output_dir,
    )
    return replace(config, **overrides)


def _train_bert(
    config: TrainConfig, bert_record: dict[str, Any], small_record: dict[str, Any], **kwargs: Any
) -> TrainResult:
    return train_adapter(config, base_record=bert_record, dataset_record=small_record, **kwargs)


def _interrupt_at(step: int) -> Any:
    """Return a step callback that sends this process a real SIGINT after ``step``."""

    def on_step(state: TrainingState) -> None:
        if state.step == step:
            signal.raise_signal(signal.SIGINT)

    return on_step


@pytest.fixture(scope="module")
def reference_run(
    tmp_path_factory: pytest.TempPathFactory,
    bert_record: dict[str, Any],
    small_record: dict[str, Any],
) -> TrainResult:
    """An uninterrupted two-epoch run that the other runs are compared with."""
    output_dir = tmp_path_factory.mktemp("reference")
    return _train_bert(_bert_config(output_dir), bert_record, small_record)


def test_train_saves_loadable_peft_adapter(reference_run: TrainResult, tiny_bert: Path) -> None:
    adapter_config = json.loads((reference_run.adapter_dir / "adapter_config.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=8)

    model = PeftModel.from_pretrained(base, reference_run.adapter_dir)

    assert (reference_run.adapter_dir / "adapter_model.safetensors").is_file()
    assert adapter_config["peft_type"] == "LORA"
    assert adapter_config["base_model_name_or_path"] == "tiny-bert"
    assert "classifier" in adapter_config["modules_to_save"]
    assert model.peft_config["default"].r == 8
    assert reference_run.steps == EPOCHS * STEPS_PER_EPOCH
    assert reference_run.is_main_process


def test_train_adapter_weights_include_head(reference_run: TrainResult) -> None:
    weights = load_file(reference_run.adapter_dir / "adapter_model.safetensors")

    assert any("lora_A" in name for name in weights)
    assert any("classifier" in name for name in weights)


def test_train_model_card_states_lineage(
    reference_run: TrainResult, bert_record: dict[str, Any], small_record: dict[str, Any]
) -> None:
    card = (reference_run.adapter_dir / "README.md").read_text()

    assert "# lora adapter for seq-cls on tiny-bert" in card
    assert reference_run.run["hyperparameters"]["adapter"] not in card
    assert str(bert_record["fingerprint"]) in card
    assert str(small_record["digest"]).removeprefix("sha256:") in card
    for index, label in enumerate(small_record["label_set"]):
        assert f"| {index} | {label} |" in card
    assert "More Information Needed" not in card


def test_train_run_record_fields(reference_run: TrainResult) -> None:
    run = reference_run.run

    assert run["task"] == "seq-cls"
    assert run["method"] == "lora"
    assert run["seed"] == 7
    assert run["hyperparameters"]["lr"] == 1e-2
    assert run["hyperparameters"]["r"] == 8
    assert run["hyperparameters"]["dataset"] == "small-fortunes@1"
    assert set(run["packages"]) == {"torch", "peft", "transformers", "adapterreg"}
    assert run["hardware"]["world_size"] == 1
    assert run["hardware"]["device"] == "cpu"
    assert 0 < run["trainable_params"] < run["total_params"]
    assert run["trainable_fraction"] == run["trainable_params"] / run["total_params"]
    assert run["packages"]["torch"] == torch.__version__
    assert run["packages"]["peft"] == peft.__version__
    assert run["packages"]["transformers"] == transformers.__version__
    assert run["code_version"] is None or len(run["code_version"].removesuffix("-dirty")) == 40
    assert run["hyperparameters"]["method"] == "lora"
    assert run["hyperparameters"]["max_length"] == 32
    assert datetime.fromisoformat(run["started_at"]).tzinfo is not None
    assert datetime.fromisoformat(run["ended_at"]) >= datetime.fromisoformat(run["started_at"])
    assert run["wall_time_s"] > 0
    json.dumps(run)


def test_train_metrics_per_epoch(reference_run: TrainResult) -> None:
    metrics = reference_run.run["metrics"]

    assert [m["epoch"] for m in metrics] == [1, 2]
    assert [m["step"] for m in metrics] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert all(0 <= m["val_accuracy"] <= 1 for m in metrics)
    assert all(m["val_loss"] > 0 and m["train_loss"] > 0 for m in metrics)
    assert metrics[1]["train_loss"] < metrics[0]["train_loss"]


def test_train_same_seed_identical_bytes(
    reference_run: TrainResult,
    tmp_path: Path,
    bert_record: dict[str, Any],
    small_record: dict[str, Any],
) -> None:
    again = _train_bert(_bert_config(tmp_path / "again"), bert_record, small_record)

    assert directory_bytes(again.adapter_dir) == directory_bytes(reference_run.adapter_dir)
    assert again.run["metrics"] == reference_run.run["metrics"]


def test_train_other_seed_other_weights(
    reference_run: TrainResult,
    tmp_path: Path,
    bert_record: dict[str, Any],
    small_record: dict[str, Any],
) -> None:
    other = _train_bert(_bert_config(tmp_path / "other", seed=8), bert_record, small_record)

    weights = "adapter_model.safetensors"
    assert (other.adapter_dir / weights).read_bytes() != (
        reference_run.adapter_dir / weights
    ).read_bytes()


@pytest.mark.parametrize(
    "interrupt_step",
    [5, STEPS_PER_EPOCH, STEPS_PER_EPOCH + 3],
    ids=["mid-epoch", "epoch-end", "second-epoch"],
)
def test_resume_after_sigint_same_bytes(
    interrupt_step: int,
    reference_run: TrainResult,
    tmp_path: Path,
    bert_record: dict[str, Any],
    small_record: dict[str, Any],
) -> None:
    config = _bert_config(tmp_path / "interrupted")

    with pytest.raises(TrainingInterrupted) as raised:
        _train_bert(config, bert_record, small_record, on_step=_interrupt_at(interrupt_step))
    checkpoint = raised.value.checkpoint
    assert checkpoint is not None
    assert raised.value.step == interrupt_step
    assert not (tmp_path / "interrupted" / "adapter").exists()

    resumed = _train_bert(replace(config, resume=checkpoint), bert_record, small_record)

    assert directory_bytes(resumed.adapter_dir) == directory_bytes(reference_run.adapter_dir)
    assert resumed.run["metrics"] == reference_run.run["metrics"]
    assert resumed.steps == reference_run.steps


def test_interrupt_checkpoint_contents(
    tmp_path: Path, bert_record: dict[str, Any], small_record: dict[str, Any]
) -> None:
    with pytest.raises(TrainingInterrupted) as raised:
        _train_bert(
            _bert_config(tmp_path / "run"), bert_record, small_record, on_step=_interrupt_at(3)
        )
    checkpoint = raised.value.checkpoint
    assert checkpoint is not None
    state = json.loads((checkpoint / "trainer_state.json").read_text())

    assert state["step"] == 3
    assert state["step_in_epoch"] == 3
    assert state["hyperparameters"]["seed"] == 7
    for name in ("adapter/adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rank0.pt"):
        assert (checkpoint / name).is_file(), name
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_with_changed_lr_rejected(
    tmp_path: Path, bert_record: dict[str, Any], small_record: dict[str, Any]
) -> None:
    config = _bert_config(tmp_path / "run")
    with pytest.raises(TrainingInterrupted) as raised:
        _train_bert(config, bert_record, small_record, on_step=_interrupt_at(2))

    with pytest.raises(InvalidInput) as rejected:
        _train_bert(
            replace(config, lr=5e-3, resume=raised.value.checkpoint), bert_record, small_record
        )

    assert "lr: 0.01 -> 0.005" in rejected.value.detail


def test_resume_not_a_checkpoint(
    tmp_path: Path, bert_record: dict[str, Any], small_record: dict[str, Any]
) -> None:
    with pytest.raises(Exception, match="not a checkpoint directory"):
        _train_bert(_bert_config(tmp_path / "run", resume=tmp_path), bert_record, small_record)


def test_train_max_steps_stops_early(
    tmp_path: Path, bert_record: dict[str, Any], small_record: dict[str, Any]
) -> None:
    result = _train_bert(_bert_config(tmp_path / "run", max_steps=5), bert_record, small_record)

    assert result.steps == 5
    assert [m["step"] for m in result.run["metrics"]] == [5]


def test_train_changed_dataset_stops_before_training(
    tmp_path: Path, bert_record: dict[str, Any], small_record: dict[str, Any]
) -> None:
    record = {**small_record, "digest": "sha256:" + "1" * 64}

    with pytest.raises(IntegrityError):
        _train_bert(_bert_config(tmp_path / "run"), bert_record, record)

    assert not (tmp_path / "run").exists()


def test_train_quantize_rejected_before_loading(
    tmp_path: Path, small_record: dict[str, Any]
) -> None:
    absent_base = {"name": "absent", "source_uri": str(tmp_path / "absent"), "files": []}
    config = _bert_config(tmp_path / "run", method=MethodOptions(quantize="4bit"))

    with pytest.raises(InvalidInput) as raised:
        _train_bert(config, absent_base, small_record)

    assert "--quantize 4bit" in raised.value.detail


def test_train_eval_split_unknown_rejected(
    tmp_path: Path, bert_record: dict[str, Any], small_record: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInput) as raised:
        _train_bert(_bert_config(tmp_path / "run", eval_split="test"), bert_record, small_record)

    assert "--eval-split 'test'" in raised.value.detail


def test_train_eval_split_none_skips_validation(
    tmp_path: Path, bert_record: dict[str, Any], small_record: dict[str, Any]
) -> None:
    result = _train_bert(
        _bert_config(tmp_path / "run", eval_split="none", epochs=1), bert_record, small_record
    )

    assert "val_loss" not in result.run["metrics"][0]
    assert result.run["metrics"][0]["train_loss"] > 0
    assert result.run["hyperparameters"]["eval_split"] == "none"


@pytest.mark.parametrize("method", ["dora", "ia3", "prompt-tuning"])
def test_train_seq_cls_other_methods(
    method: str, tmp_path: Path, bert_record: dict[str, Any], small_record: dict[str, Any]
) -> None:
    config = _bert_config(tmp_path / "run", method=MethodOptions(method=method), max_steps=3)

    result = _train_bert(config, bert_record, small_record)
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())

    assert result.run["method"] == method
    assert (
        adapter_config["peft_type"]
        == {"dora": "LORA", "ia3": "IA3", "prompt-tuning": "PROMPT_TUNING"}[method]
    )
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_train_dora_rank_pattern_applied(
    tmp_path: Path, bert_record: dict[str, Any], small_record: dict[str, Any]
) -> None:
    method = MethodOptions(
        method="dora", r=4, target_modules=("query", "value"), rank_pattern={"value": 2}
    )
    config = _bert_config(tmp_path / "run", method=method, max_steps=2)

    result = _train_bert(config, bert_record, small_record)
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    weights = load_file(result.adapter_dir / "adapter_model.safetensors")
    ranks = {
        name.split(".attention.self.")[1].split(".")[0]: tensor.shape[0]
        for name, tensor in weights.items()
        if "lora_A" in name
    }

    assert adapter_config["use_dora"] is True
    assert adapter_config["rank_pattern"] == {"value": 2}
    assert ranks == {"query": 4, "value": 2}
    assert any("lora_magnitude_vector" in name for name in weights)


def _llama_config(output_dir: Path, **overrides: Any) -> TrainConfig:
    config = TrainConfig(
        base_model="char-llama",
        dataset="say-words@1",
        adapter="say",
        task="causal-lm",
        method=MethodOptions(target_modules="all-linear"),
        epochs=4,
        batch_size=4,
        max_length=32,
        lr=2e-2,
        seed=3,
        quiet=True,
        output_dir=output_dir,
    )
    return replace(config, **overrides)


def test_train_causal_lm_loss_decreases(
    tmp_path: Path, char_llama: Path, llama_record: dict[str, Any], causal_record: dict[str, Any]
) -> None:
    result = train_adapter(
        _llama_config(tmp_path / "run"), base_record=llama_record, dataset_record=causal_record
    )
    metrics = result.run["metrics"]
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(char_llama), result.adapter_dir
    )

    assert len(metrics) == 4
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["val_perplexity"] > 1
    assert model.peft_config["default"].task_type == "CAUSAL_LM"


@pytest.mark.parametrize("method", ["prefix-tuning", "ia3"])
def test_train_causal_lm_other_methods(
    method: str,
    tmp_path: Path,
    llama_record: dict[str, Any],
    causal_record: dict[str, Any],
) -> None:
    config = _llama_config(tmp_path / "run", method=MethodOptions(method=method), max_steps=2)

    result = train_adapter(config, base_record=llama_record, dataset_record=causal_record)

    assert result.steps == 2
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()


def test_train_causal_lm_text_rows(
    tmp_path: Path, char_llama: Path, causal_dataset: Path, llama_record: dict[str, Any]
) -> None:
    from tests.trainer.builders import dataset_record, write_jsonl

    rows = [{"text": f"{row['prompt']}{row['completion']}"} for row in read_jsonl(causal_dataset)]
    path = write_jsonl(tmp_path / "texts.jsonl", rows)
    record = dataset_record(path, name="texts")

    result = train_adapter(
        _llama_config(tmp_path / "run", dataset="texts@1", epochs=1),
        base_record=llama_record,
        dataset_record=record,
    )

    assert result.steps == 8
    assert "val_loss" not in result.run["metrics"][0]


def _padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)


def test_epoch_batches_group_by_length() -> None:
    lengths = [(index * 7) % 61 + 1 for index in range(400)]
    sampler: DistributedSampler[int] = DistributedSampler(
        range(400), num_replicas=1, rank=0, shuffle=True, seed=3
    )

    grouped = epoch_batches(sampler, epoch=0, batch_size=8, lengths=lengths)
    plain = epoch_batches(sampler, epoch=0, batch_size=8)

    assert sorted(i for batch in grouped for i in batch) == list(range(400))
    assert all(len(batch) == 8 for batch in grouped)
    assert _padded_tokens(grouped, lengths) < 0.7 * _padded_tokens(plain, lengths)
    assert epoch_batches(sampler, epoch=0, batch_size=8, lengths=lengths) == grouped
    assert epoch_batches(sampler, epoch=1, batch_size=8, lengths=lengths) != grouped


def test_saved_config_sets_sorted(tmp_path: Path) -> None:
    path = tmp_path / "adapter_config.json"
    config = {"target_modules": ["value", "query"], "modules_to_save": ["score", "classifier"]}
    path.write_text(json.dumps(config))

    sort_config_sets(path)

    config = json.loads(path.read_text())
    assert config["target_modules"] == ["query", "value"]
    assert config["modules_to_save"] == ["classifier", "score"]
