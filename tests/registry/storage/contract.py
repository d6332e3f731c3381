"""Behaviour every BlobStore must show; test_local.py and test_s3.py run it on each backend.

A subclass provides a ``blob_store`` fixture that yields an empty store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from registry.errors import DigestMismatch, InvalidInput, NotFound, PayloadTooLarge
from registry.storage.base import BlobStore, PartInfo

MiB = 1024 * 1024
# S3 needs every part but the last to be at least 5 MiB.
PART_BYTES = 5 * MiB
LIMIT = 64 * MiB


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def chunked(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class CountingChunks:
    """An iterable of chunks that records how many were consumed."""

    def __init__(self, data: bytes, size: int) -> None:
        self.chunks = list(chunked(data, size))
        self.consumed = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.consumed += 1
            yield chunk


def never_read() -> Iterator[bytes]:
    raise AssertionError("the store read a stream it should have skipped")
    yield b""  # pragma: no cover - makes this a generator


def upload_parts(
    store: BlobStore, upload_id: str, handle: str, data: bytes, order: list[int]
) -> list[PartInfo]:
    pieces = {n + 1: data[n * PART_BYTES : (n + 1) * PART_BYTES] for n in range(3)}
    return [
        store.put_part(
            upload_id,
            handle,
            number,
            chunked(pieces[number]),
            max_bytes=LIMIT,
            offset=(number - 1) * PART_BYTES,
        )
        for number in order
    ]


class BlobStoreContract:
    @pytest.fixture(scope="class")
    def multipart_data(self) -> bytes:
        # Two full parts and a short last one.
        return random.Random(7).randbytes(2 * PART_BYTES + 12345)

    def test_put_blob_round_trip(self, blob_store: BlobStore) -> None:
        data = os.urandom(300_000)
        digest = digest_of(data)

        size = blob_store.put_blob(digest, chunked(data), max_bytes=LIMIT)

        assert size == len(data)
        assert blob_store.has_blob(digest)
        assert blob_store.blob_size(digest) == len(data)
        assert b"".join(blob_store.open_blob(digest, chunk_size=4096)) == data
        assert blob_store.read_range(digest, 1000, 24) == data[1000:1024]

    def test_put_blob_empty(self, blob_store: BlobStore) -> None:
        digest = digest_of(b"")

        assert blob_store.put_blob(digest, [], max_bytes=LIMIT) == 0
        assert b"".join(blob_store.open_blob(digest)) == b""

    def test_put_blob_existing_is_not_read(self, blob_store: BlobStore) -> None:
        data = os.urandom(1000)
        digest = digest_of(data)
        blob_store.put_blob(digest, chunked(data), max_bytes=LIMIT)

        size = blob_store.put_blob(digest, never_read(), max_bytes=LIMIT)

        assert size == len(data)
        assert [blob.digest for blob in blob_store.iter_blobs()] == [digest]

    def test_put_blob_digest_mismatch(self, blob_store: BlobStore) -> None:
        data = os.urandom(5000)
        declared = digest_of(b"something else")

        with pytest.raises(DigestMismatch) as caught:
            blob_store.put_blob(declared, chunked(data), max_bytes=LIMIT)

        assert declared in caught.value.detail
        assert digest_of(data) in caught.value.detail
        assert not blob_store.has_blob(declared)
        assert not blob_store.has_blob(digest_of(data))
        assert list(blob_store.iter_staged_uploads()) == []

    def test_put_blob_limit_while_streaming(self, blob_store: BlobStore) -> None:
        data = os.urandom(100 * 1024)
        chunks = CountingChunks(data, 1024)

        with pytest.raises(PayloadTooLarge) as caught:
            blob_store.put_blob(digest_of(data), chunks, max_bytes=10 * 1024)

        assert "10240" in caught.value.detail
        assert chunks.consumed == 11
        assert not blob_store.has_blob(digest_of(data))
        assert list(blob_store.iter_staged_uploads()) == []

    def test_put_blob_failed_stream_leaves_nothing(self, blob_store: BlobStore) -> None:
        def broken() -> Iterator[bytes]:
            yield b"x" * 1000
            raise ConnectionResetError("client went away")

        with pytest.raises(ConnectionResetError):
            blob_store.put_blob(digest_of(b"x" * 2000), broken(), max_bytes=LIMIT)

        assert list(blob_store.iter_blobs()) == []
        assert list(blob_store.iter_staged_uploads()) == []

    def test_multipart_in_order(self, blob_store: BlobStore, multipart_data: bytes) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        parts = upload_parts(blob_store, upload_id, handle, multipart_data, [1, 2, 3])
        digest = digest_of(multipart_data)

        size = blob_store.complete_upload(upload_id, handle, parts, digest)

        assert size == len(multipart_data)
        assert b"".join(blob_store.open_blob(digest)) == multipart_data
        assert list(blob_store.iter_staged_uploads()) == []

    def test_multipart_out_of_order(self, blob_store: BlobStore, multipart_data: bytes) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        parts = upload_parts(blob_store, upload_id, handle, multipart_data, [3, 1, 2])
        digest = digest_of(multipart_data)

        size = blob_store.complete_upload(upload_id, handle, [parts[2], parts[0], parts[1]], digest)

        assert size == len(multipart_data)
        assert b"".join(blob_store.open_blob(digest)) == multipart_data

    def test_multipart_part_info(self, blob_store: BlobStore, multipart_data: bytes) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)

        part = upload_parts(blob_store, upload_id, handle, multipart_data, [2])[0]

        assert part.part_number == 2
        assert part.size == PART_BYTES
        assert part.etag
        blob_store.abort_upload(upload_id, handle)

    def test_multipart_in_order_not_read_back(
        self, blob_store: BlobStore, multipart_data: bytes, caplog: pytest.LogCaptureFixture
    ) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        parts = upload_parts(blob_store, upload_id, handle, multipart_data, [1, 2, 3])

        with caplog.at_level(logging.INFO, logger="registry.storage"):
            blob_store.complete_upload(upload_id, handle, parts, digest_of(multipart_data))

        assert "reading" not in caplog.text
        assert b"".join(blob_store.open_blob(digest_of(multipart_data))) == multipart_data

    def test_multipart_out_of_order_read_back(
        self, blob_store: BlobStore, multipart_data: bytes, caplog: pytest.LogCaptureFixture
    ) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        parts = upload_parts(blob_store, upload_id, handle, multipart_data, [2, 1, 3])

        with caplog.at_level(logging.INFO, logger="registry.storage"):
            blob_store.complete_upload(upload_id, handle, parts, digest_of(multipart_data))

        assert "reading" in caplog.text

    def test_multipart_part_replaced_after_hashing(
        self, blob_store: BlobStore, multipart_data: bytes
    ) -> None:
        # Part 2 is hashed into the running sha256, then replaced by other bytes:
        # the running sha256 no longer describes the staged bytes.
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        parts = upload_parts(blob_store, upload_id, handle, multipart_data, [1, 2, 3])
        replaced = blob_store.put_part(
            upload_id, handle, 2, chunked(bytes(PART_BYTES)), max_bytes=LIMIT, offset=PART_BYTES
        )
        listed = [parts[0], replaced, parts[2]]

        with pytest.raises(DigestMismatch):
            blob_store.complete_upload(upload_id, handle, listed, digest_of(multipart_data))

        assert not blob_store.has_blob(digest_of(multipart_data))

    def test_multipart_part_resent_after_hashing(
        self, blob_store: BlobStore, multipart_data: bytes
    ) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        parts = upload_parts(blob_store, upload_id, handle, multipart_data, [1, 2, 3])
        again = upload_parts(blob_store, upload_id, handle, multipart_data, [2])[0]
        digest = digest_of(multipart_data)

        size = blob_store.complete_upload(upload_id, handle, [parts[0], again, parts[2]], digest)

        assert size == len(multipart_data)
        assert b"".join(blob_store.open_blob(digest)) == multipart_data

    def test_multipart_resent_part_replaces(
        self, blob_store: BlobStore, multipart_data: bytes
    ) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        wrong = bytes(PART_BYTES)
        blob_store.put_part(
            upload_id, handle, 2, chunked(wrong), max_bytes=LIMIT, offset=PART_BYTES
        )
        parts = upload_parts(blob_store, upload_id, handle, multipart_data, [1, 2, 3])
        digest = digest_of(multipart_data)

        blob_store.complete_upload(upload_id, handle, parts, digest)

        assert b"".join(blob_store.open_blob(digest)) == multipart_data

    def test_multipart_digest_mismatch(self, blob_store: BlobStore, multipart_data: bytes) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        parts = upload_parts(blob_store, upload_id, handle, multipart_data, [1, 2, 3])
        declared = digest_of(b"not these bytes")

        with pytest.raises(DigestMismatch) as caught:
            blob_store.complete_upload(upload_id, handle, parts, declared)

        assert declared in caught.value.detail
        assert digest_of(multipart_data) in caught.value.detail
        assert not blob_store.has_blob(declared)
        assert list(blob_store.iter_blobs()) == []
        assert list(blob_store.iter_staged_uploads()) == []

    def test_multipart_part_limit(self, blob_store: BlobStore) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)

        with pytest.raises(PayloadTooLarge):
            blob_store.put_part(
                upload_id, handle, 1, chunked(bytes(4096), 512), max_bytes=1024, offset=0
            )

        blob_store.abort_upload(upload_id, handle)

    def test_multipart_part_number_out_of_range(self, blob_store: BlobStore) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)

        with pytest.raises(InvalidInput):
            blob_store.put_part(upload_id, handle, 0, [b"x"], max_bytes=LIMIT, offset=0)
        with pytest.raises(InvalidInput):
            blob_store.put_part(upload_id, handle, 10_001, [b"x"], max_bytes=LIMIT, offset=0)

        blob_store.abort_upload(upload_id, handle)

    def test_multipart_repeated_part_in_list(self, blob_store: BlobStore) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        part = blob_store.put_part(upload_id, handle, 1, [b"abc"], max_bytes=LIMIT, offset=0)

        with pytest.raises(InvalidInput):
            blob_store.complete_upload(upload_id, handle, [part, part], digest_of(b"abcabc"))

        blob_store.abort_upload(upload_id, handle)

    def test_abort_upload_removes_staged_parts(self, blob_store: BlobStore) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        blob_store.put_part(upload_id, handle, 1, [b"partial"], max_bytes=LIMIT, offset=0)

        blob_store.abort_upload(upload_id, handle)

        assert list(blob_store.iter_staged_uploads()) == []
        assert list(blob_store.iter_blobs()) == []

    def test_abort_upload_without_handle(self, blob_store: BlobStore) -> None:
        # Garbage collection has the upload id of a staged upload but not its handle.
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        blob_store.put_part(upload_id, handle, 1, [b"partial"], max_bytes=LIMIT, offset=0)

        blob_store.abort_upload(upload_id, "")

        assert list(blob_store.iter_staged_uploads()) == []

    def test_iter_staged_uploads_lists_upload(self, blob_store: BlobStore) -> None:
        upload_id = os.urandom(16).hex()
        handle = blob_store.start_upload(upload_id)
        blob_store.put_part(upload_id, handle, 1, [b"partial"], max_bytes=LIMIT, offset=0)
        now = datetime.now(UTC)

        staged = list(blob_store.iter_staged_uploads())

        assert [upload.upload_id for upload in staged] == [upload_id]
        assert abs(staged[0].modified_at - now) < timedelta(minutes=1)
        blob_store.abort_upload(upload_id, handle)

    def test_iter_blobs_lists_sizes(self, blob_store: BlobStore) -> None:
        payloads = [b"a" * 10, b"b" * 20, b"c" * 30]
        for data in payloads:
            blob_store.put_blob(digest_of(data), [data], max_bytes=LIMIT)
        now = datetime.now(UTC)

        listed = list(blob_store.iter_blobs())

        assert {blob.digest: blob.size for blob in listed} == {
            digest_of(data): len(data) for data in payloads
        }
        assert all(abs(blob.modified_at - now) < timedelta(minutes=1) for blob in listed)

    def test_delete_blob(self, blob_store: BlobStore) -> None:
        digest = digest_of(b"short-lived")
        blob_store.put_blob(digest, [b"short-lived"], max_bytes=LIMIT)

        blob_store.delete_blob(digest)
        blob_store.delete_blob(digest)

        assert not blob_store.has_blob(digest)
        assert list(blob_store.iter_blobs()) == []

    def test_missing_blob_not_found(self, blob_store: BlobStore) -> None:
        digest = digest_of(b"never stored")

        assert not blob_store.has_blob(digest)
        with pytest.raises(NotFound):
            blob_store.blob_size(digest)
        with pytest.raises(NotFound):
            blob_store.open_blob(digest)
        with pytest.raises(NotFound):
            blob_store.read_range(digest, 0, 10)

    def test_read_range_past_end(self, blob_store: BlobStore) -> None:
        digest = digest_of(b"0123456789")
        blob_store.put_blob(digest, [b"0123456789"], max_bytes=LIMIT)

        assert blob_store.read_range(digest, 8, 100) == b"89"
        assert blob_store.read_range(digest, 20, 5) == b""
        assert blob_store.read_range(digest, 3, 0) == b""

    def test_invalid_digest_rejected(self, blob_store: BlobStore) -> None:
        with pytest.raises(InvalidInput):
            blob_store.put_blob("sha256:../../etc/passwd", [b"x"], max_bytes=LIMIT)
        with pytest.raises(InvalidInput):
            blob_store.has_blob("md5:abc")

    def test_invalid_upload_id_rejected(self, blob_store: BlobStore) -> None:
        with pytest.raises(InvalidInput):
            blob_store.start_upload("../escape")
