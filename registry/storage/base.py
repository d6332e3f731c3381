"""The blob store interface and the one function that lays out object keys.

Blobs are content-addressed: a blob's key is derived from its sha256 digest
and nothing else, so identical bytes are stored once. Bytes reach their final
key only after their digest has been verified; until then they live under a
staging key of their upload.

Key layout, relative to the store's root (a directory or an S3 prefix):

    blobs/sha256/<first two hex digits>/<64 hex digits>   verified content
    uploads/<upload id>/...                               parts of an upload in flight
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from registry.errors import InvalidInput

DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
UPLOAD_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
# S3 numbers multipart parts from 1 to 10,000; every store accepts the same range.
MAX_PART_NUMBER = 10_000


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:`` followed by 64 lowercase hex digits."""
    if not isinstance(digest, str) or not DIGEST_PATTERN.match(digest):
        raise InvalidInput(
            f"invalid digest {digest!r}: expected 'sha256:' followed by 64 lowercase hex digits"
        )
    return digest


def check_upload_id(upload_id: str) -> str:
    if not UPLOAD_ID_PATTERN.match(upload_id):
        raise InvalidInput(f"invalid upload id {upload_id!r}: expected 32 lowercase hex digits")
    return upload_id


def blob_key(digest: str) -> str:
    """Return the object key of a verified blob, relative to the store root."""
    hex_digest = check_digest(digest).removeprefix("sha256:")
    return f"blobs/sha256/{hex_digest[:2]}/{hex_digest}"


def upload_prefix(upload_id: str) -> str:
    """Return the key prefix under which an upload's parts are staged."""
    return f"uploads/{check_upload_id(upload_id)}/"


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    modified_at: datetime


@dataclass(frozen=True)
class PartInfo:
    """One staged part of a resumable upload."""

    part_number: int
    size: int
    # sha256 of the part's bytes, "sha256:<hex>".
    digest: str
    # Backend token needed to assemble the part (the S3 ETag; empty for files).
    etag: str


@dataclass(frozen=True)
class StagedUpload:
    """An upload in flight, for garbage collection."""

    upload_id: str
    modified_at: datetime


def check_part_number(part_number: int) -> int:
    """Return ``part_number`` if it is an integer from 1 to 10,000 (the S3 range)."""
    if isinstance(part_number, bool) or not isinstance(part_number, int):
        raise InvalidInput(f"part number {part_number!r} is not an integer")
    if not 1 <= part_number <= MAX_PART_NUMBER:
        raise InvalidInput(
            f"part number {part_number} is out of range; parts are numbered 1 to {MAX_PART_NUMBER}"
        )
    return part_number


def sorted_parts(parts: list[PartInfo]) -> list[PartInfo]:
    """Return the parts in part-number order; raise InvalidInput if empty or a number repeats."""
    if not parts:
        raise InvalidInput("an upload needs at least one part to complete")
    ordered = sorted(parts, key=lambda part: part.part_number)
    for previous, part in itertools.pairwise(ordered):
        if part.part_number == previous.part_number:
            raise InvalidInput(
                f"part {part.part_number} is listed twice; list each uploaded part once"
            )
    return ordered


class BlobStore(Protocol):
    """Content-addressed blob storage.

    Implementations raise ``registry.errors.NotFound`` for a missing blob,
    ``DigestMismatch`` when uploaded bytes do not hash to the declared digest,
    ``PayloadTooLarge`` past ``max_bytes`` (checked while streaming), and
    ``StorageError`` for backend failures, chained with ``raise ... from``.
    """

    def has_blob(self, digest: str) -> bool: ...

    def blob_size(self, digest: str) -> int:
        """Return the size in bytes of a stored blob; NotFound if absent."""
        ...

    def open_blob(self, digest: str, *, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Stream a stored blob's bytes as they are stored (no verification)."""
        ...

    def read_range(self, digest: str, start: int, length: int) -> bytes:
        """Return up to ``length`` bytes from offset ``start`` of a stored blob."""
        ...

    def put_blob(self, digest: str, chunks: Iterable[bytes], *, max_bytes: int) -> int:
        """Store a whole blob from a stream, verifying its sha256; return its size.

        The bytes go to a staging key first and reach ``blob_key(digest)`` only
        when the digest matches, so a failed or interrupted upload never leaves a
        wrong blob behind. Storing a blob that already exists is a no-op.
        """
        ...

    def start_upload(self, upload_id: str) -> str:
        """Begin a multipart upload; return the backend handle to store with it."""
        ...

    def put_part(
        self,
        upload_id: str,
        handle: str,
        part_number: int,
        chunks: Iterable[bytes],
        *,
        max_bytes: int,
    ) -> PartInfo:
        """Stage one part (numbered from 1); uploading a part number again replaces it."""
        ...

    def complete_upload(
        self, upload_id: str, handle: str, parts: list[PartInfo], digest: str
    ) -> int:
        """Assemble the parts in order, verify the digest, move to the blob key.

        Return the blob size. On a digest mismatch the staged data is removed and
        ``DigestMismatch`` raised.
        """
        ...

    def abort_upload(self, upload_id: str, handle: str) -> None: ...

    def delete_blob(self, digest: str) -> None:
        """Delete a blob; deleting a missing blob is a no-op."""
        ...

    def iter_blobs(self) -> Iterator[BlobInfo]: ...

    def iter_staged_uploads(self) -> Iterator[StagedUpload]: ...

    def presign_get(
        self, digest: str, *, expires_in: int, filename: str | None = None
    ) -> str | None:
        """Return a URL that downloads the blob without credentials, or None if unsupported."""
        ...
