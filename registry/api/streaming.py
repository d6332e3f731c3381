"""Feeding an async request body to the synchronous blob stores without buffering it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import anyio
import anyio.from_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from fastapi import Request

T = TypeVar("T")

# The worker thread takes the body in batches of about this many bytes: one
# thread hop per socket read (64 KiB) would cost more than the copy itself.
BATCH_BYTES = 4 * 1024 * 1024
# Batches read ahead while the worker thread hashes and writes the previous
# one. Memory per request is about (READ_AHEAD_BATCHES + 2) * BATCH_BYTES.
READ_AHEAD_BATCHES = 2


class _Pump:
    """Read the request body on the event loop into a bounded queue of batches."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.error: Exception | None = None
        send, receive = anyio.create_memory_object_stream[bytes](READ_AHEAD_BATCHES)
        self.send: MemoryObjectSendStream[bytes] = send
        self.receive: MemoryObjectReceiveStream[bytes] = receive

    async def run(self) -> None:
        # An error (a dropped client) is kept for the consumer, which raises it
        # where it expected the next batch, instead of ending the body early.
        async with self.send:
            try:
                await self._read_batches()
            except Exception as e:
                self.error = e

    async def _read_batches(self) -> None:
        parts: list[bytes] = []
        size = 0
        async for chunk in self.request.stream():
            parts.append(chunk)
            size += len(chunk)
            if size >= BATCH_BYTES:
                await self.send.send(b"".join(parts))
                parts, size = [], 0
        if size:
            await self.send.send(b"".join(parts))

    def batches(self) -> Iterator[bytes]:
        """Yield the batches in the worker thread, then raise the error that stopped reading."""
        while True:
            try:
                batch = anyio.from_thread.run(self.receive.receive)
            except anyio.EndOfStream:
                break
            yield batch
        if self.error is not None:
            raise self.error


async def run_with_body(request: Request, consume: Callable[[Iterator[bytes]], T]) -> T:
    """Run ``consume(chunks)`` in a worker thread while the body streams in.

    The event loop reads ahead up to ``READ_AHEAD_BATCHES`` batches, so receiving
    the next bytes overlaps with hashing and writing the previous ones, and
    memory stays bounded whatever the upload size. If ``consume`` returns or
    raises before the body ends, reading stops and the rest is never read.
    """
    pump = _Pump(request)
    failure: Exception | None = None
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(pump.run)
        try:
            result = await anyio.to_thread.run_sync(lambda: consume(pump.batches()))
        except Exception as e:
            # Raised outside the task group, so error handlers see the exception
            # itself and not an ExceptionGroup around it.
            failure = e
        finally:
            tasks.cancel_scope.cancel()
            pump.receive.close()
    if failure is not None:
        raise failure
    return result
