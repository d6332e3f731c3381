"""Reading dataset files (JSONL, CSV) for their digest, rows, columns, labels and splits."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from registry.base_manifest import file_digest
from registry.errors import InvalidInput

# A label column with more distinct values than this is not a classification label set.
MAX_LABELS = 10_000
SPLIT_COLUMN = "split"
LABEL_COLUMN = "label"


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise InvalidInput(
        f"unsupported dataset file {str(path)!r}: use .jsonl (one JSON object per line) or .csv"
    )


def iter_rows(path: Path, fmt: str | None = None) -> Iterator[dict[str, Any]]:
    """Yield each row as a dict; malformed rows raise InvalidInput with the line number."""
    fmt = fmt or detect_format(path)
    if fmt == "jsonl":
        yield from _iter_jsonl(path)
    else:
        yield from _iter_csv(path)


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidInput(f"{path.name}:{number}: invalid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise InvalidInput(f"{path.name}:{number}: expected a JSON object per line")
            yield row


def _iter_csv(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise InvalidInput(f"{path.name}: the CSV file has no header row")
        for row in reader:
            if None in row:
                raise InvalidInput(
                    f"{path.name}:{reader.line_num}: more fields than the header has"
                )
            yield dict(row)


def inspect_dataset(path: Path) -> dict[str, Any]:
    """Return the registry fields of a dataset file: digest, size, format, rows, labels."""
    if not path.is_file():
        raise InvalidInput(f"dataset file {str(path)!r} not found or not a file")
    fmt = detect_format(path)
    columns: dict[str, None] = {}
    labels: Counter[Any] = Counter()
    splits: Counter[str] = Counter()
    rows = 0
    for row in iter_rows(path, fmt):
        rows += 1
        columns.update(dict.fromkeys(row))
        if LABEL_COLUMN in row and len(labels) <= MAX_LABELS:
            labels[_hashable(row[LABEL_COLUMN])] += 1
        if SPLIT_COLUMN in row:
            splits[str(row[SPLIT_COLUMN])] += 1
    if rows == 0:
        raise InvalidInput(f"dataset file {str(path)!r} has no rows")
    digest, size = file_digest(path)
    label_set = sorted(labels, key=str) if labels and len(labels) <= MAX_LABELS else None
    return {
        "digest": digest,
        "size": size,
        "format": fmt,
        "row_count": rows,
        "columns": list(columns),
        "label_set": label_set,
        "splits": dict(sorted(splits.items())),
    }


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value
