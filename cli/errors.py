"""The one table from domain errors to exit codes, and the error printer."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from registry import errors

EXIT_CODES: dict[type[errors.RegistryError], int] = {
    errors.InvalidInput: 2,
    errors.NotFound: 3,
    errors.Conflict: 4,
    errors.GateRejected: 4,
    errors.Unauthorized: 5,
    errors.Forbidden: 5,
    errors.IntegrityError: 6,
    # An unexpected server failure: the generic exit code, because retrying rarely helps.
    errors.InternalError: 1,
    errors.ServiceUnavailable: 7,
}

F = TypeVar("F", bound=Callable[..., Any])


def exit_code_for(error: errors.RegistryError) -> int:
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def handle_errors(function: F) -> F:
    """Turn RegistryError into a message (or a JSON error document) and its exit code."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except errors.RegistryError as error:
            if kwargs.get("as_json"):
                sys.stdout.write(json.dumps({"error": error.kind, "detail": error.detail}) + "\n")
            else:
                click.echo(f"error: {error.detail}", err=True)
            sys.exit(exit_code_for(error))

    return wrapper  # type: ignore[return-value]


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print exactly one JSON document on stdout."
)
