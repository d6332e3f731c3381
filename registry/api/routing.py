"""The route class of every API router.

FastAPI runs a synchronous endpoint in a worker thread and, when the route has
a response model (inferred from a ``-> dict[str, Any]`` annotation), validates
the returned value in a second worker thread before the request's session
commits. The worker pool is finite (40 threads in anyio's default). When every
worker is blocked on a row lock, for example 40 pushes waiting for the
``adapters`` row that one more push holds, the lock holder cannot get a thread
to validate its response. It never commits, and the server hangs.

Routes built from ``RegistryRoute`` have no inferred response model, so their
JSON is encoded on the event loop. A transaction that holds locks then needs no
second worker thread between the endpoint's return and its commit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.datastructures import Default, DefaultPlaceholder
from fastapi.routing import APIRoute


class RegistryRoute(APIRoute):
    """An API route that encodes its response without a worker thread."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        response_model: Any = Default(None),
        **kwargs: Any,
    ) -> None:
        if isinstance(response_model, DefaultPlaceholder):
            response_model = None
        super().__init__(path, endpoint, response_model=response_model, **kwargs)
