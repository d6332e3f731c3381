"""Printing results: one JSON document with --json, readable tables otherwise."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

# Width of output to a pipe or file (logs, CI, `make demo`) when $COLUMNS is unset.
# Without it rich falls back to 80 columns and cuts table cells.
PIPE_WIDTH = 120


def output_width(stream: TextIO) -> int | None:
    """Return the width for output to ``stream``, or None to let rich measure the terminal.

    A terminal and $COLUMNS set the width as rich reads them; other output gets PIPE_WIDTH.
    """
    if os.environ.get("COLUMNS", "").isdigit():
        return None
    try:
        if stream.isatty():
            return None
    except ValueError:  # raised by a closed stream
        pass
    return PIPE_WIDTH


console = Console(width=output_width(sys.stdout))
err_console = Console(stderr=True, width=output_width(sys.stderr))


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")


def print_table(
    rows: list[dict[str, Any]], columns: list[str], *, title: str | None = None
) -> None:
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_cell(row.get(column)) for column in columns])
    console.print(table)


def print_fields(document: dict[str, Any], keys: list[str]) -> None:
    width = max(len(key) for key in keys)
    for key in keys:
        if key in document:
            console.print(
                f"[bold]{key.ljust(width)}[/bold]  {_cell(document[key])}", highlight=False
            )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


@contextmanager
def transfer_progress(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """Yield a progress callback drawing one bar per file, or None when disabled."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        tasks: dict[str, Any] = {}

        def update(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done, total=total)

        yield update
