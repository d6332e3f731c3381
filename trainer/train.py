"""Train a PEFT adapter on a registered base model and dataset.

The file reads top to bottom: the config, setup (seeds and determinism), the
model and data, small helpers, then the loop with one comment per phase. The
trainer saves the adapter with PEFT's ``save_pretrained`` and returns it with
its run record. Pushing the adapter to the registry is the caller's job.

Reproducibility: the same seed, data, config and machine give byte-identical
adapter files, including after an interrupt and ``resume``. Shuffling uses
``DistributedSampler``'s seed + epoch permutation, and dropout draws from the
global torch generator, whose state checkpoints save.

Under torchrun every process trains on its share of each epoch's permutation
(``batch_size`` examples per process and step) and DDP averages the
gradients. Only rank 0 validates, logs and saves.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, cast

import torch
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler
from transformers import get_linear_schedule_with_warmup

from registry.errors import InvalidInput
from registry.services.names import check_name
from trainer.checkpoint import (
    TrainingState,
    check_resumable,
    load_checkpoint,
    read_checkpoint_state,
    save_adapter,
    save_checkpoint,
)
from trainer.data import (
    TRAIN_SPLIT,
    Example,
    available_splits,
    collate,
    encode_causal_lm,
    encode_classification,
    label_names,
    locate_dataset_file,
    parse_dataset_ref,
    read_split,
    record_digest,
    verify_dataset_file,
)
from trainer.distributed import (
    DistributedContext,
    any_rank,
    barrier,
    distributed_context,
    main_process_first,
    sum_over_ranks,
)
from trainer.environment import code_version, hardware_summary, package_versions
from trainer.interrupt import stop_on_interrupt
from trainer.methods import (
    MethodOptions,
    build_peft_config,
    check_quantization_supported,
    quantization_config,
    validate_method_options,
)
from trainer.model_card import write_model_card
from trainer.models import (
    LoadedModel,
    cache_home,
    load_base_model,
    locate_base_model,
    verify_base_model,
)
from trainer.progress import TrainingProgress
from trainer.validation import evaluate_examples

logger = logging.getLogger(__name__)

DEFAULT_EVAL_SPLIT = "validation"
NO_EVAL = "none"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoint"
# Batches per megabatch when grouping by length; transformers' LengthGroupedSampler uses 50.
MEGABATCH_FACTOR = 50


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run."""

    # Registry names of the inputs and the result, and the training task.
    base_model: str
    dataset: str  # "name@version"
    adapter: str = "adapter"  # name the result will be pushed as; names the output directory
    task: str = "seq-cls"  # "seq-cls" or "causal-lm"
    method: MethodOptions = field(default_factory=MethodOptions)
    # Data. The training split is "train". eval_split is validated after every
    # epoch: None means "validation" when the dataset has it, "none" turns it off.
    eval_split: str | None = None
    max_length: int = 128  # tokens per example; longer examples are truncated
    # Optimisation.
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps in total
    batch_size: int = 16  # examples per optimizer step and process
    # Batch examples of similar length together, which cuts padding (and time)
    # when lengths vary; see epoch_batches.
    group_by_length: bool = False
    lr: float = 2e-4  # peak learning rate of AdamW
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1  # fraction of all steps over which the lr rises from 0
    max_grad_norm: float = 1.0  # clip the gradients' global L2 norm to this; 0 turns it off
    seed: int = 0
    # Output and control. output_dir defaults to $ADAPTERREG_HOME/runs/<adapter>-<time>.
    output_dir: Path | None = None
    resume: Path | None = None  # checkpoint directory of an interrupted run
    quiet: bool = False  # no progress bars

    def hyperparameters(self) -> dict[str, Any]:
        """Return every option as JSON-ready values, the method options flattened in."""
        values: dict[str, Any] = {
            key: getattr(self, key) for key in self.__dataclass_fields__ if key != "method"
        }
        values.update(self.method.to_dict())
        for key in ("output_dir", "resume"):
            values[key] = str(values[key]) if values[key] is not None else None
        return values


@dataclass(frozen=True)
class TrainResult:
    """A finished run: where the adapter is and what to record about it."""

    adapter_dir: Path
    output_dir: Path
    run: dict[str, Any]
    # Whether this process is rank 0, the one that saved the adapter and may push it.
    is_main_process: bool
    steps: int
    loop_seconds: float  # time spent in the training loop, without loading and validation


class TrainingInterrupted(Exception):
    """Training stopped on Ctrl-C; the checkpoint continues it with ``resume``."""

    def __init__(self, checkpoint: Path | None, *, step: int) -> None:
        self.checkpoint = checkpoint
        self.step = step
        where = f"checkpoint saved to {checkpoint}" if checkpoint else "no checkpoint saved"
        super().__init__(f"training interrupted after step {step}; {where}")


# Called after every optimizer step with the progress so far.
StepCallback = Callable[[TrainingState], None]


def validate_config(config: TrainConfig) -> TrainConfig:
    """Check the options before anything is loaded; return the config with method defaults.

    Raises InvalidInput naming the option, the value and what is accepted.
    """
    check_name(config.adapter, what="adapter name (--adapter)")
    check_name(config.base_model, what="base model name (--base-model)")
    dataset_name, dataset_version = parse_dataset_ref(config.dataset)
    check_name(dataset_name, what="dataset name")
    check_name(dataset_version, what="dataset version")
    method = validate_method_options(config.method, task=config.task)
    checks = (
        ("epochs", config.epochs, 1),
        ("batch-size", config.batch_size, 1),
        ("max-length", config.max_length, 2),
    )
    for flag, value, minimum in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise InvalidInput(f"--{flag} must be a whole number >= {minimum}, got {value!r}")
    if config.max_steps is not None and config.max_steps < 1:
        raise InvalidInput(f"--max-steps must be a whole number >= 1, got {config.max_steps!r}")
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise InvalidInput(f"--lr must be a finite number > 0, got {config.lr!r}")
    for key in ("weight_decay", "warmup_ratio", "max_grad_norm"):
        if not math.isfinite(getattr(config, key)):
            raise InvalidInput(f"{key} must be a finite number, got {getattr(config, key)!r}")
    if not 0 <= config.warmup_ratio < 1:
        raise InvalidInput(f"warmup_ratio must be in [0, 1), got {config.warmup_ratio!r}")
    if config.weight_decay < 0 or config.max_grad_norm < 0:
        raise InvalidInput(
            "weight_decay and max_grad_norm must be >= 0, got "
            f"{config.weight_decay!r} and {config.max_grad_norm!r}"
        )
    check_quantization_supported(method)
    return replace(config, method=method)


def train_adapter(
    config: TrainConfig,
    *,
    base_record: dict[str, Any],
    dataset_record: dict[str, Any],
    client: Any | None = None,
    on_step: StepCallback | None = None,
) -> TrainResult:
    """Train an adapter and save it under the output directory; push nothing.

    ``base_record`` and ``dataset_record`` are the registry's records; ``client``
    (a RegistryClient) downloads files that are not local. Raises InvalidInput
    for bad options, NotFound or IntegrityError for missing or changed files,
    and TrainingInterrupted on Ctrl-C after saving a checkpoint.
    """
    config = validate_config(config)
    with distributed_context() as context:
        return _run(
            config,
            context=context,
            base_record=base_record,
            dataset_record=dataset_record,
            client=client,
            on_step=on_step,
        )


def _run(
    config: TrainConfig,
    *,
    context: DistributedContext,
    base_record: dict[str, Any],
    dataset_record: dict[str, Any],
    client: Any | None,
    on_step: StepCallback | None,
) -> TrainResult:
    started_at = datetime.now(UTC)
    started = time.monotonic()
    output_dir = config.output_dir or default_output_dir(config.adapter)
    hyperparameters = config.hyperparameters()
    if config.resume is not None:
        check_resumable(
            read_checkpoint_state(config.resume), hyperparameters=hyperparameters, context=context
        )

    # Setup: seeds and deterministic kernels, then verified local copies of the inputs.
    seed_everything(config.seed)
    with main_process_first(context):
        base_dir = locate_base_model(base_record, client=client, cache_dir=cache_home())
        data_path = locate_dataset_file(dataset_record, client=client, cache_dir=cache_home())
    verify_base_model(base_dir, base_record)
    verify_dataset_file(data_path, dataset_record)

    # Model: the base, wrapped by PEFT; new modules (a classification head) train in full.
    labels = label_names(dataset_record) if config.task == "seq-cls" else None
    loaded = load_base_model(
        base_dir, task=config.task, labels=labels, quantization=quantization_config(config.method)
    )
    model = wrap_with_peft(loaded, config=config, base_record=base_record, device=context.device)
    # Distinct dropout masks per process; the model's initial weights are already fixed.
    torch.manual_seed(config.seed + context.rank)

    # Data: tokenized once, batched per epoch from the sampler's permutation.
    train_examples = encode_split(
        data_path, dataset_record, loaded, config=config, split=TRAIN_SPLIT
    )
    eval_split = resolve_eval_split(config.eval_split, dataset_record)
    eval_examples = (
        encode_split(data_path, dataset_record, loaded, config=config, split=eval_split)
        if eval_split and context.is_main
        else []
    )
    if not train_examples:
        raise InvalidInput(
            f"dataset {config.dataset} has no training examples left after tokenizing"
        )
    sampler: DistributedSampler[int] = DistributedSampler(
        cast(Dataset[Example], train_examples),
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=True,
        seed=config.seed,
    )
    steps_per_epoch = math.ceil(len(sampler) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    # Optimizer and schedule: AdamW on the trainable parameters, linear warmup and decay.
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(
        optimizer,
        num_warmup_steps=round(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    state = TrainingState()
    if config.resume is not None:
        state = load_checkpoint(
            config.resume, model=model, optimizer=optimizer, scheduler=scheduler, context=context
        )
    forward_model: torch.nn.Module = (
        DistributedDataParallel(
            model, device_ids=[context.device] if context.device.type == "cuda" else None
        )
        if context.enabled
        else model
    )
    logger.info(
        "training %s on %s: %d examples, %d steps of %d x %d, %s",
        config.adapter,
        config.dataset,
        len(train_examples),
        total_steps,
        config.batch_size,
        context.world_size,
        config.method.method,
    )

    loop = _Loop(
        config=config,
        context=context,
        model=model,
        forward_model=forward_model,
        optimizer=optimizer,
        scheduler=scheduler,
        state=state,
        pad_token_id=int(loaded.tokenizer.pad_token_id),
        hyperparameters=hyperparameters,
        checkpoint_dir=output_dir / CHECKPOINT_DIR,
        on_step=on_step,
    )
    loop_seconds = loop.run(train_examples, eval_examples, sampler=sampler, total_steps=total_steps)

    # Save: PEFT's own format (adapter_config.json + adapter_model.safetensors).
    adapter_dir = output_dir / ADAPTER_DIR
    if context.is_main:
        save_adapter(model, adapter_dir)
    barrier(context)
    trainable_count, total_count = model.get_nb_trainable_parameters()
    run = {
        "task": config.task,
        "method": config.method.method,
        # Record the split validation ran on, because config.eval_split None means the default.
        "hyperparameters": {**hyperparameters, "eval_split": eval_split or NO_EVAL},
        "seed": config.seed,
        "code_version": code_version(),
        "packages": package_versions(),
        "hardware": hardware_summary(device=context.device, world_size=context.world_size),
        "started_at": started_at.isoformat(),
        "ended_at": datetime.now(UTC).isoformat(),
        "wall_time_s": state.elapsed_s + time.monotonic() - started,
        "trainable_params": int(trainable_count),
        "total_params": int(total_count),
        "trainable_fraction": trainable_count / total_count if total_count else None,
        "metrics": state.metrics,
    }
    if context.is_main:
        write_model_card(
            adapter_dir,
            task=config.task,
            method=config.method.method,
            base_record=base_record,
            dataset=config.dataset,
            dataset_digest=record_digest(dataset_record),
            labels=labels,
            hyperparameters={**hyperparameters, "eval_split": eval_split or NO_EVAL},
            metrics=state.metrics,
        )
    logger.info("saved adapter %s to %s after %d steps", config.adapter, adapter_dir, state.step)
    return TrainResult(
        adapter_dir=adapter_dir,
        output_dir=output_dir,
        run=run,
        is_main_process=context.is_main,
        steps=state.step,
        loop_seconds=loop_seconds,
    )


def default_output_dir(adapter: str) -> Path:
    home = Path(os.environ.get("ADAPTERREG_HOME", ".adapterreg"))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return home / "runs" / f"{adapter}-{stamp}"


def seed_everything(seed: int) -> None:
    """Seed Python and torch and ask torch for deterministic kernels."""
    # cuBLAS needs a fixed workspace to be deterministic; it reads this at CUDA init.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def wrap_with_peft(
    loaded: LoadedModel, *, config: TrainConfig, base_record: dict[str, Any], device: torch.device
) -> PeftModel:
    """Apply the PEFT method to the base model and move it to ``device``."""
    base = loaded.model
    if config.method.quantize is not None:
        # NOTE: runs only with bitsandbytes on CUDA, which the test machines lack.
        base = prepare_model_for_kbit_training(base)
    # PEFT already trains and saves the heads it knows for the task ("classifier" and
    # "score" for seq-cls); other new modules are added to modules_to_save.
    known_heads = {"classifier", "score"} if config.task == "seq-cls" else set()
    extra_modules = [name for name in loaded.new_modules if not known_heads & set(name.split("."))]
    peft_config = build_peft_config(
        config.method, task=config.task, modules_to_save=extra_modules or None
    )
    model = cast(PeftModel, get_peft_model(base, peft_config))
    # The registry name, not a local cache path, so adapter files do not depend
    # on where the base model was found. get_peft_model overwrites the field.
    model.peft_config["default"].base_model_name_or_path = str(base_record.get("name"))
    if config.method.quantize is None:
        model.to(device)
    return model


def encode_split(
    path: Path,
    record: dict[str, Any],
    loaded: LoadedModel,
    *,
    config: TrainConfig,
    split: str,
) -> list[Example]:
    rows = read_split(path, record, split=split)
    if config.task == "seq-cls":
        return encode_classification(
            rows, loaded.tokenizer, labels=label_names(record), max_length=config.max_length
        )
    return encode_causal_lm(rows, loaded.tokenizer, max_length=config.max_length)


def resolve_eval_split(requested: str | None, record: dict[str, Any]) -> str | None:
    """Return the split to validate on after each epoch, or None for no validation."""
    if requested == NO_EVAL:
        return None
    splits = available_splits(record)
    if requested is None:
        return DEFAULT_EVAL_SPLIT if DEFAULT_EVAL_SPLIT in splits else None
    if requested not in splits:
        raise InvalidInput(
            f"--eval-split {requested!r} is not a split of dataset {record.get('name')}@"
            f"{record.get('version')}; use one of {sorted(splits)!r} or 'none'"
        )
    return requested


def epoch_batches(
    sampler: DistributedSampler[int],
    *,
    epoch: int,
    batch_size: int,
    lengths: list[int] | None = None,
) -> list[list[int]]:
    """Return this process's batches of example indices for ``epoch``.

    With ``lengths`` (tokens per example), batches group examples of similar
    length, as transformers' ``group_by_length`` does: the permutation is cut
    into megabatches of MEGABATCH_FACTOR batches, each sorted by length. The
    batches are then shuffled with a generator seeded by the sampler's seed and
    the epoch, so long and short batches alternate.
    """
    sampler.set_epoch(epoch)
    indices = list(sampler)
    if lengths is not None:
        indices = _sorted_megabatches(indices, lengths, batch_size=batch_size)
    batches = [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]
    if lengths is not None:
        generator = torch.Generator().manual_seed(sampler.seed + epoch)
        order = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in order]
    return batches


def _sorted_megabatches(indices: list[int], lengths: list[int], *, batch_size: int) -> list[int]:
    size = batch_size * MEGABATCH_FACTOR
    ordered: list[int] = []
    for start in range(0, len(indices), size):
        ordered += sorted(indices[start : start + size], key=lambda i: -lengths[i])
    return ordered


@dataclass
class _Loop:
    """The training loop and the state it advances."""

    config: TrainConfig
    context: DistributedContext
    model: PeftModel
    forward_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: TrainingState
    pad_token_id: int
    hyperparameters: dict[str, Any]
    checkpoint_dir: Path
    on_step: StepCallback | None
    # True while weights and state are being updated together; an interrupt
    # arriving then cannot be checkpointed consistently.
    updating: bool = False

    def run(
        self,
        train_examples: list[Example],
        eval_examples: list[Example],
        *,
        sampler: DistributedSampler[int],
        total_steps: int,
    ) -> float:
        """Train until ``total_steps``; return the seconds spent in training steps."""
        started = time.monotonic()
        show = not self.config.quiet and self.context.is_main
        progress = TrainingProgress(
            enabled=show, epochs=self.config.epochs, steps=total_steps, done_steps=self.state.step
        )
        with progress, stop_on_interrupt() as interrupt:
            try:
                return self._epochs(
                    train_examples,
                    eval_examples,
                    sampler=sampler,
                    total_steps=total_steps,
                    progress=progress,
                    stop_requested=lambda: interrupt.requested,
                )
            except KeyboardInterrupt:
                # A second Ctrl-C, or one outside the main thread.
                self._interrupt(started, hard=True)
            except _StopRequested:
                self._interrupt(started, hard=False)
        raise AssertionError("unreachable: _interrupt always raises")

    def _epochs(
        self,
        train_examples: list[Example],
        eval_examples: list[Example],
        *,
        sampler: DistributedSampler[int],
        total_steps: int,
        progress: TrainingProgress,
        stop_requested: Callable[[], bool],
    ) -> float:
        state = self.state
        loop_seconds = 0.0
        while state.epoch < self.config.epochs:
            progress.set_epoch(state.epoch)
            batches = epoch_batches(
                sampler,
                epoch=state.epoch,
                batch_size=self.config.batch_size,
                lengths=[len(e.input_ids) for e in train_examples]
                if self.config.group_by_length
                else None,
            )
            epoch_started = time.monotonic()
            for indices in batches[state.step_in_epoch :]:
                if state.step >= total_steps:
                    break
                # Step: forward, backward, clip, update.
                loss = self._step([train_examples[i] for i in indices])
                progress.step(loss)
                if self.on_step is not None:
                    self.on_step(state)
                # Interruption: every rank stops after the same step.
                if any_rank(self.context, stop_requested()):
                    raise _StopRequested
            loop_seconds += time.monotonic() - epoch_started
            # Validation: per-epoch metrics, computed on rank 0.
            self._end_epoch(eval_examples)
            if state.step >= total_steps:
                break
        return loop_seconds

    def _step(self, examples: list[Example]) -> float:
        batch = collate(examples, pad_token_id=self.pad_token_id)
        batch = {key: value.to(self.context.device) for key, value in batch.items()}
        self.forward_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        output = self.forward_model(**batch)
        output.loss.backward()
        loss = float(output.loss.detach())
        self.updating = True
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.state.step += 1
        self.state.step_in_epoch += 1
        self.state.loss_sum += loss
        self.state.loss_count += 1
        self.updating = False
        return loss

    def _interrupt(self, started: float, *, hard: bool) -> NoReturn:
        """Save a checkpoint of the last completed step and raise TrainingInterrupted."""
        self.state.elapsed_s += time.monotonic() - started
        if hard and (self.updating or self.context.enabled):
            # NOTE: a KeyboardInterrupt inside an update, or on one rank of several
            # while the others wait in a collective, leaves no consistent state.
            logger.warning("interrupted at step %d without a checkpoint", self.state.step)
            raise TrainingInterrupted(None, step=self.state.step)
        checkpoint = save_checkpoint(
            self.checkpoint_dir,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=self.state,
            hyperparameters=self.hyperparameters,
            context=self.context,
        )
        raise TrainingInterrupted(checkpoint, step=self.state.step)

    def _end_epoch(self, eval_examples: list[Example]) -> None:
        state = self.state
        loss_sum, loss_count = sum_over_ranks(self.context, state.loss_sum, state.loss_count)
        metrics: dict[str, Any] = {
            "epoch": state.epoch + 1,
            "step": state.step,
            "train_loss": loss_sum / loss_count if loss_count else None,
        }
        if self.context.is_main and eval_examples:
            values = evaluate_examples(
                self.model,
                eval_examples,
                task=self.config.task,
                batch_size=self.config.batch_size,
                pad_token_id=self.pad_token_id,
                device=self.context.device,
            )
            metrics.update({f"val_{key}": value for key, value in values.items()})
        if self.context.is_main:
            logger.info(
                "epoch %d/%d, step %d: %s",
                state.epoch + 1,
                self.config.epochs,
                state.step,
                ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)),
            )
        self.updating = True
        state.metrics.append(metrics)
        state.epoch += 1
        state.step_in_epoch = 0
        state.loss_sum = 0.0
        state.loss_count = 0
        self.updating = False


class _StopRequested(Exception):
    """Raised inside the loop when a Ctrl-C asked to stop after the current step."""
