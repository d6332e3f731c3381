"""Blob store on a local filesystem, with the key layout of ``registry.storage.base``.

Every write goes to a temporary file in the store's own ``uploads/``
directory, is flushed with fsync, and reaches its final name with
``os.replace``, which is atomic within one filesystem. Readers therefore see
either the whole blob or none, and two processes storing the same digest at
once both succeed with identical bytes.

A multipart upload writes each part straight into one staging file at the
part's offset (``uploads/<id>/blob``), so completing it copies nothing: the
verified staging file is renamed to its blob key. A marker file per part
(``uploads/<id>/part-<n>``) records the write token (``PartInfo.etag``, random
per write) and size of the bytes in the part's range once they are written and
fsynced, and is empty while they change. File locks (flock, released by the
kernel when a process dies) keep writers and completion apart, across threads
and processes:

- a writer holds an exclusive lock on its part's marker, so two requests for
  one part take turns, and a shared lock on the staging file;
- completion holds an exclusive lock on the staging file, so no part changes
  while it checks the markers, verifies the bytes and renames the file.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
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
    PartHasher,
    PartInfo,
    RunningDigests,
    StagedUpload,
    blob_key,
    check_digest,
    check_part_number,
    quarantine_key,
    sorted_parts,
    upload_prefix,
)

logger = logging.getLogger(__name__)

BLOB_DIRECTORY = "blobs/sha256"
UPLOAD_DIRECTORY = "uploads"
STAGED_BLOB_NAME = "blob"
READ_CHUNK_BYTES = 4 * 1024 * 1024
# A part's write token: uuid4().hex.
WRITE_TOKEN_PATTERN = re.compile(r"^[0-9a-f]{32}$")


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
        self._running = RunningDigests()

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _blob_path(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    def _upload_dir(self, upload_id: str) -> Path:
        return self.root / upload_prefix(upload_id)

    def _marker_path(self, upload_id: str, part_number: int) -> Path:
        return self._upload_dir(upload_id) / f"part-{check_part_number(part_number)}"

    def _staging_path(self, upload_id: str) -> Path:
        return self._upload_dir(upload_id) / STAGED_BLOB_NAME

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
        offset: int,
    ) -> PartInfo:
        """Write one part into the staging file at ``offset``, then record its marker."""
        if offset < 0:
            raise InvalidInput(f"invalid offset {offset} for part {part_number}; offsets are >= 0")
        with (
            self._locked_marker(upload_id, part_number) as marker,
            self._locked_staging(upload_id, fcntl.LOCK_SH, create=True) as staging,
            self._running.hash_part(upload_id, part_number, offset=offset) as hasher,
        ):
            # The range is about to change: no marker until it contains whole, synced bytes again.
            os.ftruncate(marker, 0)
            path = self._staging_path(upload_id)
            _write_range(staging, path, chunks, hasher, offset=offset, max_bytes=max_bytes)
            info = PartInfo(part_number=part_number, size=hasher.size, etag=uuid.uuid4().hex)
            _write_marker(marker, self._marker_path(upload_id, part_number), info)
            hasher.commit(info)
        return info

    @contextmanager
    def _locked_marker(self, upload_id: str, part_number: int) -> Iterator[int]:
        path = self._marker_path(upload_id, part_number)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            raise NotFound(f"upload {upload_id} is not in progress; start a new upload") from None
        try:
            with _os_errors("locking", path):
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _locked_staging(self, upload_id: str, operation: int, *, create: bool) -> Iterator[int]:
        path = self._staging_path(upload_id)
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            raise NotFound(
                f"upload {upload_id} has no staged bytes; it was completed or aborted, "
                "or no part arrived yet"
            ) from None
        try:
            with _os_errors("locking", path):
                fcntl.flock(fd, operation)
            # Completion may have moved this file to its blob key while we waited.
            if not _is_file_at(fd, path):
                raise NotFound(f"upload {upload_id} was completed or aborted; start a new upload")
            yield fd
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def complete_upload(
        self, upload_id: str, handle: str, parts: list[PartInfo], digest: str
    ) -> int:
        """Verify the staging file and rename it to its blob key.

        The running digest verifies it when every listed part arrived in order
        and still has the marker it was hashed with. Otherwise the file is read back.
        """
        check_digest(digest)
        if not self._upload_dir(upload_id).is_dir():
            raise NotFound(f"upload {upload_id} is not in progress; start a new upload")
        ordered = sorted_parts(parts)
        if self.has_blob(digest):
            self.abort_upload(upload_id, handle)
            return self.blob_size(digest)
        size = sum(part.size for part in ordered)
        with self._locked_staging(upload_id, fcntl.LOCK_EX, create=False) as staging:
            computed = self._staged_digest(upload_id, staging, ordered, size=size)
            if computed != digest:
                self.abort_upload(upload_id, handle)
                raise DigestMismatch(
                    f"upload {upload_id} assembles to {computed}, not the declared {digest}; "
                    "the staged parts were removed, upload the blob again"
                )
            with _os_errors("writing", self._staging_path(upload_id)):
                os.fsync(staging)
            self._publish(self._staging_path(upload_id), digest)
        self.abort_upload(upload_id, handle)
        logger.info("stored blob %s (%d bytes) from upload %s", digest, size, upload_id)
        return size

    def _staged_digest(
        self, upload_id: str, staging: int, parts: list[PartInfo], *, size: int
    ) -> str:
        path = self._staging_path(upload_id)
        markers_match = self._check_markers(upload_id, parts)
        staged_size = os.fstat(staging).st_size
        if staged_size != size:
            raise InvalidInput(
                f"upload {upload_id} has {staged_size} bytes staged but its parts add up to "
                f"{size} bytes; upload the blob again"
            )
        running = self._running.digest_of(upload_id, parts) if markers_match else None
        if running is not None:
            return running
        logger.info("upload %s: parts did not all arrive in order; reading them back", upload_id)
        return _hash_file(staging, path, size)

    def _check_markers(self, upload_id: str, parts: list[PartInfo]) -> bool:
        """Return whether every part's marker names the listed write token.

        Raise InvalidInput if a marker records another size than the listed part.
        """
        all_match = True
        for part in parts:
            staged = _read_marker(self._marker_path(upload_id, part.part_number))
            if staged is None:
                all_match = False
                continue
            staged_token, staged_size = staged
            if staged_size != part.size:
                raise InvalidInput(
                    f"part {part.part_number} of upload {upload_id} has {staged_size} bytes "
                    f"staged, not {part.size}; upload the part again"
                )
            all_match = all_match and staged_token == part.etag
        return all_match

    def abort_upload(self, upload_id: str, handle: str) -> None:
        self._running.forget(upload_id)
        shutil.rmtree(self._upload_dir(upload_id), ignore_errors=True)

    def delete_blob(self, digest: str) -> None:
        path = self._blob_path(digest)
        with _os_errors("deleting", path):
            path.unlink(missing_ok=True)
        logger.info("deleted blob %s", digest)

    def quarantine_blob(self, digest: str) -> str:
        source = self._blob_path(digest)
        target = self.root / quarantine_key(digest, datetime.now(UTC))
        with _os_errors("creating", target.parent):
            target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except FileNotFoundError:
            raise NotFound(f"blob {digest} is not in the store") from None
        except OSError as e:
            raise StorageError(
                f"moving {str(source)!r} to {str(target)!r} failed: {e.strerror or e}"
            ) from e
        _fsync_directory(source.parent)
        logger.warning("moved damaged blob %s to %s", digest, target)
        return str(target)

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


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (at_path.st_dev, at_path.st_ino)


def _write_range(
    fd: int,
    path: Path,
    chunks: Iterable[bytes],
    hasher: PartHasher,
    *,
    offset: int,
    max_bytes: int,
) -> None:
    position = offset
    # Errors raised by the chunk iterator itself (a dropped client) pass through as is.
    for chunk in chunks:
        if hasher.size + len(chunk) > max_bytes:
            raise PayloadTooLarge(
                f"part exceeds the limit of {max_bytes} bytes; cut the blob into parts of "
                "the upload's part_size"
            )
        hasher.update(chunk)
        with _os_errors("writing", path):
            _pwrite_all(fd, chunk, position)
        position += len(chunk)
    with _os_errors("writing", path):
        os.fsync(fd)


def _pwrite_all(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view = view[written:]
        position += written


def _write_marker(fd: int, path: Path, info: PartInfo) -> None:
    with _os_errors("writing", path):
        _pwrite_all(fd, f"{info.etag} {info.size}\n".encode(), 0)
        os.fsync(fd)
        _fsync_directory(path.parent)


def _read_marker(path: Path) -> tuple[str, int] | None:
    """Return the (write token, size) a part's marker records, or None if absent or partial."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return None
    token, _, size = text.strip().partition(" ")
    if not WRITE_TOKEN_PATTERN.match(token) or not size.isdigit():
        return None
    return token, int(size)


def _hash_file(fd: int, path: Path, size: int) -> str:
    sha256 = hashlib.sha256()
    position = 0
    with _os_errors("reading", path):
        while position < size:
            chunk = os.pread(fd, min(READ_CHUNK_BYTES, size - position), position)
            if not chunk:
                break
            sha256.update(chunk)
            position += len(chunk)
    return f"sha256:{sha256.hexdigest()}"
