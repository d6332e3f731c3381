"""Blob store on a local filesystem, with the key layout of ``registry.storage.base``.

Every write goes to a temporary file in the store's own ``uploads/``
directory, is flushed with fsync, and reaches its final name with
``os.replace``, which is atomic within one filesystem. Readers therefore see
either the whole blob or none, and two processes storing the same digest at
once both succeed with identical bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from registry.errors import DigestMismatch, InvalidInput, NotFound, PayloadTooLarge, StorageError
from registry.storage.base import (
    DIGEST_PATTERN,
    UPLOAD_ID_PATTERN,
    BlobInfo,
    PartInfo,
    StagedUpload,
    blob_key,
    check_digest,
    check_part_number,
    sorted_parts,
    upload_prefix,
)

logger = logging.getLogger(__name__)

BLOB_DIRECTORY = "blobs/sha256"
UPLOAD_DIRECTORY = "uploads"


def _to_datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


@contextmanager
def _os_errors(action: str, path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise StorageError(f"{action} {str(path)!r} failed: {e.strerror or e}") from e


class LocalBlobStore:
    """Content-addressed blobs in a directory (see the module docstring for atomicity).

    Part sizes are not restricted, unlike S3's 5 MiB minimum for all parts but the last.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _blob_path(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    def _upload_dir(self, upload_id: str) -> Path:
        return self.root / upload_prefix(upload_id)

    def _part_path(self, upload_id: str, part_number: int) -> Path:
        return self._upload_dir(upload_id) / f"part-{check_part_number(part_number)}"

    def has_blob(self, digest: str) -> bool:
        return self._blob_path(digest).is_file()

    def blob_size(self, digest: str) -> int:
        path = self._blob_path(digest)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None
        except OSError as e:
            raise StorageError(f"stat of {str(path)!r} failed: {e.strerror or e}") from e

    def _open_blob_file(self, digest: str) -> BinaryIO:
        path = self._blob_path(digest)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None
        except OSError as e:
            raise StorageError(f"opening {str(path)!r} failed: {e.strerror or e}") from e

    def open_blob(self, digest: str, *, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        # Open now, so that a missing blob raises NotFound here and not on the first next().
        file = self._open_blob_file(digest)
        return self._iter_file(file, chunk_size)

    @staticmethod
    def _iter_file(file: BinaryIO, chunk_size: int) -> Iterator[bytes]:
        with file:
            while chunk := file.read(chunk_size):
                yield chunk

    def read_range(self, digest: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise InvalidInput(
                f"invalid range start={start} length={length}; both must be non-negative"
            )
        with self._open_blob_file(digest) as file:
            file.seek(start)
            return file.read(length)

    def put_blob(self, digest: str, chunks: Iterable[bytes], *, max_bytes: int) -> int:
        """Store a blob from a stream. A blob already present is kept and ``chunks`` is not read."""
        check_digest(digest)
        if self.has_blob(digest):
            return self.blob_size(digest)
        staging = self._upload_dir(uuid.uuid4().hex)
        try:
            with _os_errors("creating", staging):
                staging.mkdir(parents=True)
            size, computed = self._write_staged(staging / "blob", chunks, max_bytes=max_bytes)
            if computed != digest:
                raise DigestMismatch(
                    f"uploaded bytes hash to {computed}, not the declared {digest}; "
                    "re-send the blob or fix the declared digest"
                )
            self._publish(staging / "blob", digest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("stored blob %s (%d bytes)", digest, size)
        return size

    def _write_staged(
        self, path: Path, chunks: Iterable[bytes], *, max_bytes: int | None
    ) -> tuple[int, str]:
        """Write ``chunks`` to a new file at ``path`` and return its size and digest."""
        sha256 = hashlib.sha256()
        size = 0
        with _os_errors("creating", path):
            file = path.open("wb")
        with file:
            # Errors raised by the chunk iterator itself (a dropped client) pass through as is.
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise PayloadTooLarge(
                        f"upload exceeds the limit of {max_bytes} bytes; "
                        "split it into parts or raise the limit"
                    )
                sha256.update(chunk)
                with _os_errors("writing", path):
                    file.write(chunk)
            with _os_errors("writing", path):
                file.flush()
                os.fsync(file.fileno())
        return size, f"sha256:{sha256.hexdigest()}"

    def _publish(self, staged: Path, digest: str) -> None:
        target = self._blob_path(digest)
        with _os_errors("moving a verified blob to", target):
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
            _fsync_directory(target.parent)

    def start_upload(self, upload_id: str) -> str:
        directory = self._upload_dir(upload_id)
        with _os_errors("creating", directory):
            directory.mkdir(parents=True, exist_ok=True)
        return ""

    def put_part(
        self,
        upload_id: str,
        handle: str,
        part_number: int,
        chunks: Iterable[bytes],
        *,
        max_bytes: int,
    ) -> PartInfo:
        target = self._part_path(upload_id, part_number)
        if not target.parent.is_dir():
            raise NotFound(f"upload {upload_id} is not in progress; start a new upload")
        staged = target.parent / f".{target.name}.{uuid.uuid4().hex}"
        try:
            size, digest = self._write_staged(staged, chunks, max_bytes=max_bytes)
            with _os_errors("storing part", target):
                os.replace(staged, target)
        finally:
            staged.unlink(missing_ok=True)
        return PartInfo(part_number=part_number, size=size, digest=digest, etag="")

    def complete_upload(
        self, upload_id: str, handle: str, parts: list[PartInfo], digest: str
    ) -> int:
        check_digest(digest)
        directory = self._upload_dir(upload_id)
        if not directory.is_dir():
            raise NotFound(f"upload {upload_id} is not in progress; start a new upload")
        ordered = sorted_parts(parts)
        for part in ordered:
            self._check_staged_part(upload_id, part)
        if self.has_blob(digest):
            self.abort_upload(upload_id, handle)
            return self.blob_size(digest)
        assembled = directory / "blob"
        size, computed = self._write_staged(
            assembled, self._iter_parts(upload_id, ordered), max_bytes=None
        )
        if computed != digest:
            self.abort_upload(upload_id, handle)
            raise DigestMismatch(
                f"upload {upload_id} assembles to {computed}, not the declared {digest}; "
                "the staged parts were removed, upload the blob again"
            )
        self._publish(assembled, digest)
        self.abort_upload(upload_id, handle)
        logger.info("stored blob %s (%d bytes) from upload %s", digest, size, upload_id)
        return size

    def _check_staged_part(self, upload_id: str, part: PartInfo) -> None:
        path = self._part_path(upload_id, part.part_number)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise InvalidInput(
                f"part {part.part_number} of upload {upload_id} was never stored; upload it"
            ) from None
        if size != part.size:
            raise InvalidInput(
                f"part {part.part_number} of upload {upload_id} has {size} bytes staged, "
                f"not {part.size}; upload the part again"
            )

    def _iter_parts(self, upload_id: str, parts: list[PartInfo]) -> Iterator[bytes]:
        for part in parts:
            path = self._part_path(upload_id, part.part_number)
            with _os_errors("reading", path), path.open("rb") as file:
                while chunk := file.read(1024 * 1024):
                    yield chunk

    def abort_upload(self, upload_id: str, handle: str) -> None:
        shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)

    def delete_blob(self, digest: str) -> None:
        path = self._blob_path(digest)
        with _os_errors("deleting", path):
            path.unlink(missing_ok=True)
        logger.info("deleted blob %s", digest)

    def iter_blobs(self) -> Iterator[BlobInfo]:
        top = self.root / BLOB_DIRECTORY
        if not top.is_dir():
            return
        for shard in sorted(top.iterdir()):
            if not shard.is_dir():
                continue
            for path in sorted(shard.iterdir()):
                digest = f"sha256:{path.name}"
                if not DIGEST_PATTERN.match(digest) or path.name[:2] != shard.name:
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # deleted since the listing
                    continue
                yield BlobInfo(
                    digest=digest, size=stat.st_size, modified_at=_to_datetime(stat.st_mtime)
                )

    def iter_staged_uploads(self) -> Iterator[StagedUpload]:
        top = self.root / UPLOAD_DIRECTORY
        if not top.is_dir():
            return
        for directory in sorted(top.iterdir()):
            if not UPLOAD_ID_PATTERN.match(directory.name):
                continue
            try:
                latest = _latest_mtime(directory)
            except FileNotFoundError:  # completed or aborted since the listing
                continue
            yield StagedUpload(upload_id=directory.name, modified_at=_to_datetime(latest))

    def presign_get(
        self, digest: str, *, expires_in: int, filename: str | None = None
    ) -> str | None:
        return None


def _latest_mtime(directory: Path) -> float:
    # Rewriting a part in place would not touch the directory, so look at the parts too.
    times = [directory.stat().st_mtime]
    for entry in directory.iterdir():
        try:
            times.append(entry.stat().st_mtime)
        except FileNotFoundError:
            continue
    return max(times)


def _fsync_directory(directory: Path) -> None:
    # Persist the rename itself, because a crash can otherwise lose the new directory entry.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
