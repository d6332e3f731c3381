"""Feeding an async request body to the synchronous blob stores without buffering it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

import anyio
import anyio.from_thread
from fastapi import Request

T = TypeVar("T")


async def run_with_body(request: Request, consume: Callable[[Iterator[bytes]], T]) -> T:
    """Run ``consume(chunks)`` in a worker thread while the body streams in.

    The thread pulls one chunk at a time from the event loop, so memory stays
    at one chunk whatever the upload size.
    """
    stream: AsyncIterator[bytes] = request.stream()

    async def next_chunk() -> bytes:
        return await stream.__anext__()

    def chunks() -> Iterator[bytes]:
        while True:
            try:
                chunk = anyio.from_thread.run(next_chunk)
            except StopAsyncIteration:
                return
            if chunk:
                yield chunk

    return await anyio.to_thread.run_sync(lambda: consume(chunks()))
