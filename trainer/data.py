"""Training data: locate and verify a registered dataset file, read a split, tokenize it.

Files are JSONL (one object per line) or CSV with a header row. A file that
holds several splits has a ``split`` column, and the dataset record's
``splits`` maps each split name to its row count. A file without that column
holds a single split, which is read as ``train``.

Columns by task:

- seq-cls: ``text`` and ``label``. Label ids follow the order of the record's
  ``label_set``; a label outside it stops the run.
- causal-lm: ``text``, trained on every token, or ``prompt`` and ``completion``,
  trained on the completion only (the prompt's labels are -100, which the loss
  ignores).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch

from registry.dataset_files import SPLIT_COLUMN, detect_format, iter_rows
from registry.errors import IntegrityError, InvalidInput, NotFound

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"
# Label value that the loss of transformers' models ignores.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One tokenized example; ``labels`` is a class id (seq-cls) or one id per token."""

    input_ids: list[int]
    labels: int | list[int]


def parse_dataset_ref(ref: str) -> tuple[str, str]:
    """Split ``name@version`` into its parts; raise InvalidInput on any other form."""
    name, separator, version = ref.partition("@")
    if not separator or not name or not version or "@" in version:
        raise InvalidInput(f"--dataset {ref!r} must have the form NAME@VERSION, e.g. fortunes@1")
    return name, version


def record_digest(record: dict[str, Any]) -> str:
    """Return the dataset record's file digest as ``sha256:<hex>``."""
    digest = record.get("digest") or record.get("sha256")
    if not isinstance(digest, str) or not digest:
        raise InvalidInput(
            f"dataset record {record.get('name')!r} has no digest; register the dataset again"
        )
    return digest if digest.startswith("sha256:") else f"sha256:{digest}"


def local_path_of_uri(uri: str) -> Path | None:
    """Return the local path of a ``file://`` URI or a plain path, else None."""
    if not uri:
        return None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):
        return Path(uri)
    return None


def locate_dataset_file(record: dict[str, Any], *, client: Any | None, cache_dir: Path) -> Path:
    """Return a local copy of the dataset file: its ``file://`` URI, else a download.

    The download goes to ``cache_dir`` and is skipped when a copy with the
    registered digest is already there. Raises NotFound when the file is neither
    local nor uploaded.
    """
    name, version = record.get("name"), record.get("version")
    local = local_path_of_uri(str(record.get("uri") or ""))
    if local is not None and local.is_file():
        return local
    if not record.get("uploaded") or client is None:
        raise NotFound(
            f"dataset {name}@{version} is not at {record.get('uri')!r} and was not uploaded; "
            "copy the file there or register it again with --upload"
        )
    suffix = ".csv" if record.get("format") == "csv" else ".jsonl"
    target = cache_dir / "datasets" / str(name) / f"{version}{suffix}"
    if target.is_file() and file_sha256(target) == record_digest(record):
        return target
    logger.info("downloading dataset %s@%s to %s", name, version, target)
    downloaded: Path = client.download_dataset(str(name), str(version), target)
    return downloaded


def file_sha256(path: Path) -> str:
    sha256 = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1024 * 1024):
            sha256.update(chunk)
    return f"sha256:{sha256.hexdigest()}"


def verify_dataset_file(path: Path, record: dict[str, Any]) -> None:
    """Raise IntegrityError unless the file's sha256 equals the registered digest."""
    expected = record_digest(record)
    actual = file_sha256(path)
    if actual != expected:
        raise IntegrityError(
            f"dataset file {str(path)!r} has digest {actual}, but dataset "
            f"{record.get('name')}@{record.get('version')} was registered with {expected}; "
            "the file changed since registration, so register it as a new version"
        )


def read_split(path: Path, record: dict[str, Any], *, split: str) -> list[dict[str, Any]]:
    """Return the rows of one split; raise InvalidInput when the file has no such split."""
    fmt = str(record.get("format") or detect_format(path))
    rows = list(iter_rows(path, fmt))
    if rows and SPLIT_COLUMN in rows[0]:
        selected = [row for row in rows if str(row.get(SPLIT_COLUMN)) == split]
    elif split == TRAIN_SPLIT:
        selected = rows
    else:
        selected = []
    if not selected:
        raise InvalidInput(
            f"dataset {record.get('name')}@{record.get('version')} has no rows in split "
            f"{split!r}; its splits are {sorted(available_splits(record, rows))!r}"
        )
    return selected


def available_splits(record: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> set[str]:
    """Return the split names of a dataset: the record's, else ``{"train"}``."""
    splits = record.get("splits") or {}
    if splits:
        return set(splits)
    if rows and SPLIT_COLUMN in rows[0]:
        return {str(row.get(SPLIT_COLUMN)) for row in rows}
    return {TRAIN_SPLIT}


def label_names(record: dict[str, Any]) -> list[str]:
    """Return the dataset's labels as strings, in ``label_set`` order (the class ids)."""
    label_set = record.get("label_set")
    if not label_set:
        raise InvalidInput(
            f"dataset {record.get('name')}@{record.get('version')} has no label set, so it "
            "cannot train --task seq-cls; add a 'label' column or use --task causal-lm"
        )
    return [str(label) for label in label_set]


def _column(row: dict[str, Any], column: str, *, number: int) -> str:
    value = row.get(column)
    if value is None:
        raise InvalidInput(
            f"row {number} has no {column!r} column (found {sorted(row)!r}); "
            f"add {column!r} to every row"
        )
    return str(value)


def encode_classification(
    rows: list[dict[str, Any]], tokenizer: Any, *, labels: list[str], max_length: int
) -> list[Example]:
    """Tokenize ``text`` (truncated to ``max_length`` tokens) and map ``label`` to its id."""
    label_ids = {label: index for index, label in enumerate(labels)}
    texts: list[str] = []
    targets: list[int] = []
    for number, row in enumerate(rows, start=1):
        texts.append(_column(row, "text", number=number))
        label = _column(row, "label", number=number)
        if label not in label_ids:
            raise InvalidInput(
                f"row {number} has label {label!r}, which is not in the dataset's label set "
                f"{labels!r}; fix the row or register the dataset again"
            )
        targets.append(label_ids[label])
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return [
        Example(input_ids=list(ids), labels=target)
        for ids, target in zip(encoded, targets, strict=True)
    ]


def encode_causal_lm(
    rows: list[dict[str, Any]], tokenizer: Any, *, max_length: int
) -> list[Example]:
    """Tokenize ``text`` or ``prompt`` + ``completion`` rows for next-token prediction.

    An end-of-sequence token follows each text or completion. Examples whose
    completion is cut off entirely by ``max_length`` are dropped with a warning,
    because they have no token to learn from.
    """
    examples: list[Example] = []
    dropped = 0
    for number, row in enumerate(rows, start=1):
        if "prompt" in row or "completion" in row:
            example = _encode_prompt_completion(
                row, tokenizer, number=number, max_length=max_length
            )
        else:
            ids = _with_eos(
                tokenizer, _token_ids(tokenizer, _column(row, "text", number=number), special=True)
            )
            example = Example(input_ids=ids[:max_length], labels=ids[:max_length])
        if all(label == IGNORE_INDEX for label in example.labels):  # type: ignore[union-attr]
            dropped += 1
            continue
        examples.append(example)
    if dropped:
        logger.warning(
            "dropped %d of %d examples whose prompt fills all %d tokens of max_length",
            dropped,
            len(rows),
            max_length,
        )
    return examples


def _encode_prompt_completion(
    row: dict[str, Any], tokenizer: Any, *, number: int, max_length: int
) -> Example:
    prompt = _token_ids(tokenizer, _column(row, "prompt", number=number), special=True)
    completion = _with_eos(
        tokenizer, _token_ids(tokenizer, _column(row, "completion", number=number), special=False)
    )
    input_ids = (prompt + completion)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + completion)[:max_length]
    return Example(input_ids=input_ids, labels=labels)


def _token_ids(tokenizer: Any, text: str, *, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _with_eos(tokenizer: Any, ids: list[int]) -> list[int]:
    eos = tokenizer.eos_token_id
    if eos is None or (ids and ids[-1] == eos):
        return ids
    return [*ids, eos]


def collate(examples: list[Example], *, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest example; return input_ids, attention_mask and labels."""
    length = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    per_token = isinstance(examples[0].labels, list)
    labels = (
        torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        if per_token
        else torch.zeros(len(examples), dtype=torch.long)
    )
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids, dtype=torch.long)
        attention_mask[row, :size] = 1
        if isinstance(example.labels, list):
            labels[row, : len(example.labels)] = torch.tensor(example.labels, dtype=torch.long)
        else:
            labels[row] = example.labels
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
