"""The README.md model card saved with every trained adapter.

PEFT's own card is a template of placeholders. This one states what a serving
system needs to use the adapter without the registry. It names the base model
with its revision and fingerprint and the dataset with its digest. It lists
the class id of every label, the method and its settings, and the validation
metrics per epoch.
Everything in it is deterministic, so a retrained adapter with the same seed,
data and settings keeps the same digest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CARD_NAME = "README.md"
# Settings that vary between runs without changing the weights. The adapter name is
# one: the same weights pushed under two names keep one digest.
VOLATILE = {"adapter", "output_dir", "resume", "quiet"}


def write_model_card(
    adapter_dir: Path,
    *,
    task: str,
    method: str,
    base_record: dict[str, Any],
    dataset: str,
    dataset_digest: str,
    labels: list[str] | None,
    hyperparameters: dict[str, Any],
    metrics: list[dict[str, Any]],
) -> Path:
    """Write README.md into ``adapter_dir`` in place of PEFT's template and return its path."""
    base_name = str(base_record.get("name"))
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {json.dumps(base_name)}",
        "tags:",
        "- adapterreg",
        f"- {json.dumps(method)}",
        "---",
        "",
        f"# {method} adapter for {task} on {base_name}",
        "",
        "Trained by adapterreg.",
        "",
        "## Base model",
        "",
        f"- name: {base_name}",
        f"- revision: {base_record.get('revision') or '-'}",
        f"- fingerprint: {base_record.get('fingerprint') or '-'}",
        "",
        "## Training data",
        "",
        f"- dataset: {dataset}",
        f"- digest: {dataset_digest}",
    ]
    if labels:
        lines += [
            "",
            "## Labels",
            "",
            "Class id and label, in the order of the classification head's outputs:",
            "",
            "| id | label |",
            "|---|---|",
            *(f"| {index} | {label} |" for index, label in enumerate(labels)),
        ]
    settings = {k: v for k, v in sorted(hyperparameters.items()) if k not in VOLATILE}
    lines += [
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=2, sort_keys=True, default=str),
        "```",
    ]
    if metrics:
        lines += ["", "## Metrics per epoch", "", "```json"]
        lines += [json.dumps(metrics, indent=2, sort_keys=True), "```"]
    path = adapter_dir / CARD_NAME
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
