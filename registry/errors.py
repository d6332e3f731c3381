"""Domain errors shared by the services, the API, the client and the CLI.

They know nothing about HTTP: ``registry.api.errors`` maps each class to a
status code and ``cli.main`` maps the same classes to exit codes.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of every error adapterreg raises on purpose."""

    kind = "RegistryError"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(RegistryError):
    kind = "NotFound"


class Conflict(RegistryError):
    kind = "Conflict"


class InvalidInput(RegistryError):
    """A request, name, reference or option that breaks a rule."""

    kind = "InvalidInput"


class InvalidAdapter(InvalidInput):
    """Adapter files that do not bind to their base model or are malformed."""

    kind = "InvalidAdapter"


class PayloadTooLarge(InvalidInput):
    kind = "PayloadTooLarge"


class DigestMismatch(InvalidInput):
    """Uploaded bytes whose sha256 differs from the digest the client declared."""

    kind = "DigestMismatch"


class IntegrityError(RegistryError):
    """Stored bytes that no longer match their digest, or a blob that went missing."""

    kind = "IntegrityError"


class InternalError(RegistryError):
    """An unexpected server failure (HTTP 500 other than IntegrityError); the server log has it."""

    kind = "InternalError"


class Unauthorized(RegistryError):
    kind = "Unauthorized"


class Forbidden(RegistryError):
    kind = "Forbidden"


class GateRejected(RegistryError):
    """A promotion whose evaluation results did not pass the gate policy."""

    kind = "GateRejected"


class ServiceUnavailable(RegistryError):
    """A dependency (database, object store) that cannot be reached right now."""

    kind = "ServiceUnavailable"


class StorageError(ServiceUnavailable):
    kind = "StorageError"


ERROR_CLASSES: dict[str, type[RegistryError]] = {
    cls.kind: cls
    for cls in (
        RegistryError,
        NotFound,
        Conflict,
        InvalidInput,
        InvalidAdapter,
        PayloadTooLarge,
        DigestMismatch,
        IntegrityError,
        InternalError,
        Unauthorized,
        Forbidden,
        GateRejected,
        ServiceUnavailable,
        StorageError,
    )
}
