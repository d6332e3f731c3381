"""Feeding an async request body to the synchronous blob stores without buffering it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import anyio
import anyio.from_thread
from fastapi import Request

T = TypeVar("T")

# The worker thread takes the body in batches of about this many bytes: one
# thread hop per socket read (64 KiB) would cost more than the copy itself.
BATCH_BYTES = 1024 * 1024


async def run_with_body(request: Request, consume: Callable[[Iterator[bytes]], T]) -> T:
    """Run ``consume(chunks)`` in a worker thread while the body streams in.

    The thread pulls one batch at a time from the event loop, so memory stays
    at about ``BATCH_BYTES`` whatever the upload size.
    """
    stream: AsyncIterator[bytes] = request.stream()
    finished = False

    async def next_batch() -> bytes:
        nonlocal finished
        parts: list[bytes] = []
        size = 0
        while size < BATCH_BYTES:
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                finished = True
                break
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    def batches() -> Iterator[bytes]:
        while not finished:
            batch = anyio.from_thread.run(next_batch)
            if batch:
                yield batch

    return await anyio.to_thread.run_sync(lambda: consume(batches()))
