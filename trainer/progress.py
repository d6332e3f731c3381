"""Progress bars for epochs and steps, drawn with rich on stderr when it is a terminal."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainingProgress:
    """Two bars (epochs, steps) that do nothing when disabled or when stderr is not a TTY."""

    def __init__(self, *, enabled: bool, epochs: int, steps: int, done_steps: int = 0) -> None:
        self._progress: Progress | None = None
        if enabled and sys.stderr.isatty():
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
        self._epochs = epochs
        self._steps = steps
        self._done_steps = done_steps
        self._epoch_task: TaskID | None = None
        self._step_task: TaskID | None = None

    def __enter__(self) -> TrainingProgress:
        if self._progress is not None:
            self._progress.start()
            self._epoch_task = self._progress.add_task("epochs", total=self._epochs, status="")
            self._step_task = self._progress.add_task(
                "steps", total=self._steps, completed=self._done_steps, status=""
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def set_epoch(self, epoch: int) -> None:
        """Show ``epoch`` (from 0) as the current one."""
        if self._progress is not None and self._epoch_task is not None:
            self._progress.update(self._epoch_task, completed=epoch)

    def step(self, loss: float) -> None:
        if self._progress is not None and self._step_task is not None:
            self._progress.update(self._step_task, advance=1, status=f"loss {loss:.4f}")
