"""The blob store interface and the one function that lays out object keys.

Blobs are content-addressed: a blob's key is derived from its sha256 digest
and nothing else, so identical bytes are stored once. Bytes reach their final
key only after their digest has been verified; until then they live under a
staging key of their upload.

Key layout, relative to the store's root (a directory or an S3 prefix):

    blobs/sha256/<first two hex digits>/<64 hex digits>   verified content
    uploads/<upload id>/...                               parts of an upload in flight
    quarantine/sha256/<64 hex digits>.<UTC time>          damaged objects moved aside

A multipart upload is verified in one of two ways. While its parts arrive in
order, the store keeps a running sha256 of the whole upload (``RunningDigests``)
and completing it needs no second pass over the bytes. When that chain is
broken (a restarted server, a part out of order, a part sent again with other
bytes), completing the upload reads the assembled bytes back and hashes them.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from registry.errors import InvalidInput

DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
UPLOAD_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
# S3 numbers multipart parts from 1 to 10,000; every store accepts the same range.
MAX_PART_NUMBER = 10_000
# Uploads whose running digest one store object keeps; the least recently used
# beyond this are dropped and fall back to reading their bytes back.
MAX_RUNNING_DIGESTS = 1000


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


def quarantine_key(digest: str, moved_at: datetime) -> str:
    """Return the key a damaged blob object is moved to, relative to the store root.

    Nothing serves or collects keys under ``quarantine/``: they are kept for inspection.
    """
    hex_digest = check_digest(digest).removeprefix("sha256:")
    return f"quarantine/sha256/{hex_digest}.{moved_at.strftime('%Y%m%dT%H%M%S%fZ')}"


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
    # Token of this write of the part: the S3 ETag, or a random id per write for
    # files. Completion compares it with the token the running sha256 recorded,
    # so a part replaced after it was hashed is detected.
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


@dataclass
class _Chain:
    """The running sha256 of an upload's parts 1..n, hashed in order as they arrived."""

    sha256: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    # (size, etag) of each part hashed into ``sha256``, in part-number order.
    parts: list[tuple[int, str]] = field(default_factory=list)
    # True while a part that continues the chain is streaming in.
    busy: bool = False


class PartHasher:
    """Count one part's bytes while it streams and, if it continues the chain, hash them.

    A part that does not continue the chain (out of order, or sent again) is
    not hashed here: completing its upload reads the assembled bytes back.
    A store calls ``update`` for every chunk and ``commit`` once the part is
    stored for good. Leaving the ``RunningDigests.hash_part`` block without
    ``commit`` leaves the chain where it was, so sending the part again continues it.
    """

    def __init__(self, chain: _Chain | None, lock: threading.Lock) -> None:
        self._chain = chain
        self._lock = lock
        self._running = chain.sha256.copy() if chain is not None else None
        self.size = 0
        self.committed = False

    @property
    def continues_chain(self) -> bool:
        return self._running is not None

    def update(self, chunk: bytes) -> None:
        if self._running is not None:
            self._running.update(chunk)
        self.size += len(chunk)

    def commit(self, info: PartInfo) -> None:
        """Record the stored part; advance the chain if this part continues it."""
        self.committed = True
        if self._chain is None or self._running is None:
            return
        with self._lock:
            self._chain.sha256 = self._running
            self._chain.size += info.size
            self._chain.parts.append((info.size, info.etag))
            self._chain.busy = False

    def release(self) -> None:
        if self._chain is not None and self._running is not None and not self.committed:
            with self._lock:
                self._chain.busy = False


class RunningDigests:
    """The running sha256 of each upload in flight, advanced while its parts arrive in order.

    One store object keeps one in memory, so the state is per server process:
    parts of one upload that reach several processes, or a restart, leave no
    complete chain, and the store reads the bytes back instead. Completing an
    upload uses the chain only if it covers exactly the listed parts, with the
    same sizes and write tokens (``PartInfo.etag``), so a part replaced after it
    was hashed also forces the read-back.
    """

    def __init__(self, *, max_uploads: int = MAX_RUNNING_DIGESTS) -> None:
        self._lock = threading.Lock()
        self._chains: OrderedDict[str, _Chain] = OrderedDict()
        self._max_uploads = max_uploads

    @contextmanager
    def hash_part(self, upload_id: str, part_number: int, *, offset: int) -> Iterator[PartHasher]:
        """Yield a hasher for one part; it extends the chain if the part is the next in order."""
        hasher = PartHasher(self._claim(upload_id, part_number, offset), self._lock)
        try:
            yield hasher
        finally:
            hasher.release()

    def _claim(self, upload_id: str, part_number: int, offset: int) -> _Chain | None:
        with self._lock:
            chain = self._chains.get(upload_id)
            if chain is None and part_number == 1:
                chain = self._chains[upload_id] = _Chain()
                while len(self._chains) > self._max_uploads:
                    self._chains.popitem(last=False)
            if chain is None or chain.busy:
                return None
            if part_number != len(chain.parts) + 1 or offset != chain.size:
                return None
            self._chains.move_to_end(upload_id)
            chain.busy = True
            return chain

    def digest_of(self, upload_id: str, parts: list[PartInfo]) -> str | None:
        """Return the running digest if the chain covers exactly ``parts`` (sorted), else None."""
        expected = [(part.size, part.etag) for part in parts]
        numbers = [part.part_number for part in parts]
        with self._lock:
            chain = self._chains.get(upload_id)
            if chain is None or chain.busy or chain.parts != expected:
                return None
            if numbers != list(range(1, len(parts) + 1)):
                return None
            return f"sha256:{chain.sha256.hexdigest()}"

    def forget(self, upload_id: str) -> None:
        with self._lock:
            self._chains.pop(upload_id, None)


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
        offset: int,
    ) -> PartInfo:
        """Stage one part (numbered from 1); uploading a part number again replaces it.

        ``offset`` is where the part starts in the blob: the sizes of all parts
        before it. Parts sent in order extend the upload's running sha256.
        """
        ...

    def complete_upload(
        self, upload_id: str, handle: str, parts: list[PartInfo], digest: str
    ) -> int:
        """Assemble the parts in order, verify the digest, move to the blob key.

        The running sha256 verifies an upload whose parts arrived in order;
        otherwise the assembled bytes are read back and hashed. Return the blob
        size. On a digest mismatch the staged data is removed and
        ``DigestMismatch`` raised.
        """
        ...

    def abort_upload(self, upload_id: str, handle: str) -> None: ...

    def delete_blob(self, digest: str) -> None:
        """Delete a blob; deleting a missing blob is a no-op."""
        ...

    def quarantine_blob(self, digest: str) -> str:
        """Move a blob's object to a ``quarantine_key`` and return where it went.

        The blob is then absent, so the next upload of its digest stores it
        again. Raises NotFound if the blob is absent.
        """
        ...

    def iter_blobs(self) -> Iterator[BlobInfo]: ...

    def iter_staged_uploads(self) -> Iterator[StagedUpload]: ...

    def presign_get(
        self, digest: str, *, expires_in: int, filename: str | None = None
    ) -> str | None:
        """Return a URL that downloads the blob without credentials, or None if unsupported."""
        ...
