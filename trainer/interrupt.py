"""Ctrl-C handling for the training loop: stop at the next step boundary."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)


class InterruptFlag:
    """Set by the first SIGINT; the loop reads it after every optimizer step."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def stop_on_interrupt() -> Iterator[InterruptFlag]:
    """Turn the first SIGINT into a stop request; a second one raises KeyboardInterrupt.

    Stopping between steps keeps weights, optimizer and step count consistent
    for the checkpoint. Outside the main thread Python cannot install signal
    handlers, so there SIGINT keeps raising KeyboardInterrupt at once.
    """
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True
        logger.warning("interrupt received: stopping after this step (Ctrl-C again to stop now)")

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
