"""Training checkpoints: everything needed to continue a run to the same final weights.

A checkpoint directory holds

- ``adapter/``: the trainable weights, written by PEFT's ``save_pretrained``;
- ``optimizer.pt`` and ``scheduler.pt``: their ``state_dict()``;
- ``trainer_state.json``: step, epoch, metrics so far and the hyperparameters,
  which a resumed run must match;
- ``rank<N>.pt``: each process's random number generator states and its
  running loss of the current epoch.

The directory is written under a temporary name and renamed when complete, so
an interrupted save never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file

from registry.errors import InvalidInput, NotFound
from trainer.distributed import DistributedContext, barrier

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
ADAPTER_DIR = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Hyperparameters that may differ between the interrupted and the resumed run:
# they do not change the trained weights.
RESUMABLE_CHANGES = frozenset({"output_dir", "resume", "quiet"})


@dataclass
class TrainingState:
    """Progress of a run; saved in checkpoints."""

    step: int = 0  # optimizer steps completed, over all epochs
    epoch: int = 0  # current epoch, from 0
    step_in_epoch: int = 0  # batches of the current epoch already trained on
    # Sum and count of this process's batch losses in the current epoch.
    loss_sum: float = 0.0
    loss_count: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    # Seconds spent training before this process started (for a resumed run).
    elapsed_s: float = 0.0


def save_checkpoint(
    directory: Path,
    *,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainingState,
    hyperparameters: dict[str, Any],
    context: DistributedContext,
) -> Path:
    """Write a checkpoint to ``directory``, replacing an older one there; return it.

    Every rank must call this: rank 0 writes the shared files and each rank its
    own RNG states.
    """
    partial = directory.with_name(directory.name + ".partial")
    if context.is_main:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_adapter(model, partial / ADAPTER_DIR)
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
        torch.save(scheduler.state_dict(), partial / "scheduler.pt")
        shared = {
            "step": state.step,
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "metrics": state.metrics,
            "elapsed_s": state.elapsed_s,
            "world_size": context.world_size,
            "hyperparameters": hyperparameters,
        }
        (partial / STATE_FILE).write_text(json.dumps(shared, indent=2, default=str) + "\n")
    barrier(context)
    torch.save(_rank_state(state), partial / f"rank{context.rank}.pt")
    barrier(context)
    if context.is_main:
        old = directory.with_name(directory.name + ".old")
        if directory.exists():
            directory.rename(old)
        partial.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
        logger.info("saved checkpoint at step %d to %s", state.step, directory)
    barrier(context)
    return directory


def save_adapter(model: PeftModel, directory: Path) -> None:
    """Save the adapter with PEFT's ``save_pretrained`` (safetensors).

    The trainer never resizes the vocabulary, so full embedding matrices are
    never saved. Leaving ``save_embedding_layers`` at "auto" would make PEFT
    look up ``base_model_name_or_path``, a registry name, on the Hugging Face Hub.
    """
    model.save_pretrained(str(directory), save_embedding_layers=False)
    sort_config_sets(directory / "adapter_config.json")
    apply_umask_modes(directory)


def sort_config_sets(path: Path) -> None:
    """Sort the lists PEFT writes from Python sets, such as ``target_modules``.

    A set's order depends on the process's string hash seed, so without this two
    identical runs in separate processes write configs, and digests, that differ.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    changed = False
    for key in ("target_modules", "modules_to_save", "layers_to_transform"):
        value = config.get(key)
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            ordered = sorted(value)
            changed = changed or ordered != value
            config[key] = ordered
    if changed:
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def apply_umask_modes(directory: Path) -> None:
    """Give every file under ``directory`` mode 0666 minus the umask, as ``open`` does.

    safetensors 0.8's ``save_file`` creates its files with mode 0600, which hides
    saved weights from the other users and services that read them.
    """
    mode = 0o666 & ~current_umask()
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def current_umask() -> int:
    """Return the process umask without changing it (Linux), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    # NOTE: a file another thread creates between these two calls gets umask 0o077.
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def _rank_state(state: TrainingState) -> dict[str, Any]:
    rng: dict[str, Any] = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"rng": rng, "loss_sum": state.loss_sum, "loss_count": state.loss_count}


def read_checkpoint_state(directory: Path) -> dict[str, Any]:
    """Return the parsed ``trainer_state.json``; raise NotFound when it is not a checkpoint."""
    path = directory / STATE_FILE
    if not path.is_file():
        raise NotFound(
            f"--resume {str(directory)!r} is not a checkpoint directory (no {STATE_FILE}); "
            "pass the 'checkpoint' directory that an interrupted run printed"
        )
    state: dict[str, Any] = json.loads(path.read_text())
    return state


def check_resumable(
    saved: dict[str, Any], *, hyperparameters: dict[str, Any], context: DistributedContext
) -> None:
    """Raise InvalidInput when the resumed run differs in anything that changes the result."""
    before = saved.get("hyperparameters", {})
    changed = sorted(
        key
        for key in set(before) | set(hyperparameters)
        if key not in RESUMABLE_CHANGES and before.get(key) != hyperparameters.get(key)
    )
    if changed:
        details = ", ".join(
            f"{key}: {before.get(key)!r} -> {hyperparameters.get(key)!r}" for key in changed
        )
        raise InvalidInput(
            f"cannot resume with different settings ({details}); use the options of the "
            "interrupted run"
        )
    if saved.get("world_size") != context.world_size:
        raise InvalidInput(
            f"the checkpoint was written by {saved.get('world_size')} processes, this run has "
            f"{context.world_size}; resume with --nproc-per-node {saved.get('world_size')}"
        )


def load_checkpoint(
    directory: Path,
    *,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    context: DistributedContext,
) -> TrainingState:
    """Restore weights, optimizer, scheduler and this rank's RNG states; return the progress."""
    saved = read_checkpoint_state(directory)
    weights = load_file(directory / ADAPTER_DIR / ADAPTER_WEIGHTS, device=str(context.device))
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise InvalidInput(
            f"checkpoint {str(directory)!r} has weights this model does not have: "
            f"{unexpected[:5]!r}; resume with the method options of the interrupted run"
        )
    optimizer.load_state_dict(
        torch.load(directory / "optimizer.pt", map_location=context.device, weights_only=True)
    )
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    rank_state = torch.load(directory / f"rank{context.rank}.pt", weights_only=False)
    _restore_rng(rank_state["rng"])
    logger.info("resumed from %s at step %d", directory, saved["step"])
    return TrainingState(
        step=int(saved["step"]),
        epoch=int(saved["epoch"]),
        step_in_epoch=int(saved["step_in_epoch"]),
        loss_sum=float(rank_state["loss_sum"]),
        loss_count=int(rank_state["loss_count"]),
        metrics=list(saved.get("metrics", [])),
        elapsed_s=float(saved.get("elapsed_s", 0.0)),
    )


def _restore_rng(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def state_as_dict(state: TrainingState) -> dict[str, Any]:
    return asdict(state)
