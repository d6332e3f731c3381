"""Validation metrics of a model on tokenized examples: loss, and accuracy for seq-cls."""

from __future__ import annotations

import math
from typing import Any

import torch

from trainer.data import IGNORE_INDEX, Example, collate


@torch.no_grad()
def evaluate_examples(
    model: torch.nn.Module,
    examples: list[Example],
    *,
    task: str,
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
) -> dict[str, float]:
    """Return ``loss`` and, for seq-cls, ``accuracy``; for causal-lm, ``perplexity``.

    The loss is the mean over examples (seq-cls) or over predicted tokens
    (causal-lm), so it does not depend on the batch size. The model is left in
    eval mode.
    """
    model.eval()
    loss_sum = 0.0
    count = 0
    correct = 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_token_id=pad_token_id)
        batch = {key: value.to(device) for key, value in batch.items()}
        output = model(**batch)
        weight = _loss_weight(batch["labels"], task=task)
        loss_sum += float(output.loss) * weight
        count += weight
        if task == "seq-cls":
            correct += int((output.logits.argmax(dim=-1) == batch["labels"]).sum())
    if count == 0:
        return {}
    loss = loss_sum / count
    if task == "seq-cls":
        return {"loss": loss, "accuracy": correct / count}
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def _loss_weight(labels: Any, *, task: str) -> int:
    """Return how many terms the batch's mean loss averages over."""
    if task == "seq-cls":
        return int(labels.shape[0])
    # Causal LMs predict token t+1 from tokens up to t, so the first label of each
    # row is never a target.
    return int((labels[:, 1:] != IGNORE_INDEX).sum())
