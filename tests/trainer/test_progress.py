"""Progress bars: drawn on a terminal, off with --quiet and when stderr is not a terminal."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from trainer.progress import TrainingProgress


@contextmanager
def _terminal_stderr(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Point sys.stderr at a pseudo-terminal; yield the file descriptor of its master side.

    Tests call this in their body, because pytest installs its own sys.stderr
    after fixtures are set up.
    """
    master, slave = os.openpty()
    stream = open(slave, "w", buffering=1)  # noqa: SIM115
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        yield master
    finally:
        stream.close()
        os.close(master)


def _read_available(fd: int) -> bytes:
    sys.stderr.flush()
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks)


def test_progress_draws_on_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    with _terminal_stderr(monkeypatch) as terminal:
        with TrainingProgress(enabled=True, epochs=2, steps=4) as progress:
            progress.set_epoch(0)
            progress.step(0.5)
        drawn = _read_available(terminal).decode(errors="replace")

    assert "epochs" in drawn
    assert "steps" in drawn


def test_progress_quiet_draws_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    with _terminal_stderr(monkeypatch) as terminal:
        with TrainingProgress(enabled=False, epochs=2, steps=4) as progress:
            progress.step(0.5)
        drawn = _read_available(terminal)

    assert drawn == b""


def test_progress_off_without_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)

    with TrainingProgress(enabled=True, epochs=2, steps=4) as progress:
        progress.step(0.5)

    assert captured.getvalue() == ""
