"""Blob store on the S3 API (AWS S3, MinIO, R2), through a boto3 client."""

from __future__ import annotations

import hashlib
import logging
import tempfile
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any, NoReturn

from botocore.exceptions import BotoCoreError, ClientError

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

MiB = 1024 * 1024
GiB = 1024 * MiB
# S3 limits: every part but the last is at least 5 MiB, and copy_object copies at most 5 GiB.
MIN_PART_BYTES = 5 * MiB
MAX_COPY_OBJECT_BYTES = 5 * GiB
PUT_PART_BYTES = 8 * MiB
COPY_PART_BYTES = 1 * GiB
READ_CHUNK_BYTES = 1 * MiB
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})
# Errors in the part list a client sent, as opposed to failures of the store.
INVALID_PART_CODES = frozenset({"InvalidPart", "InvalidPartOrder", "EntityTooSmall"})
STAGED_BLOB_NAME = "blob"


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _content_disposition(filename: str) -> str:
    """Return an RFC 6266 attachment header that survives any file name."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    quoted = urllib.parse.quote(filename, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quoted}"


class S3BlobStore:
    """Content-addressed blobs in an S3 bucket, under an optional key prefix.

    Key layout, relative to ``s3://<bucket>/<prefix>/``:

        blobs/sha256/<2 hex>/<64 hex>   verified blobs
        uploads/<upload id>/blob        staged bytes: a native multipart upload
                                        in flight, or an object not yet verified

    Bytes are verified before they are copied to their blob key, so a blob key
    only ever contains bytes that hash to its digest. The boto3 client is passed
    in, so its endpoint, credentials and retries are the caller's choice.

    A multipart upload whose parts arrived in order is verified by its running
    sha256; ``complete_multipart_upload`` lists each part's ETag, so S3 assembles
    exactly the parts that were hashed. Other uploads are read back once.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        copy_part_bytes: int = COPY_PART_BYTES,
        max_copy_object_bytes: int = MAX_COPY_OBJECT_BYTES,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.copy_part_bytes = copy_part_bytes
        self.max_copy_object_bytes = max_copy_object_bytes
        self._running = RunningDigests()

    def __repr__(self) -> str:
        return f"S3BlobStore('s3://{self.bucket}/{self.prefix}')"

    def _key(self, relative: str) -> str:
        return self.prefix + relative

    def _staging_key(self, upload_id: str) -> str:
        return self._key(upload_prefix(upload_id) + STAGED_BLOB_NAME)

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    @contextmanager
    def _translate(self, action: str, key: str) -> Iterator[None]:
        """Turn botocore errors into NotFound or StorageError, naming the action and key."""
        try:
            yield
        except ClientError as e:
            code = _error_code(e)
            if code in NOT_FOUND_CODES:
                raise NotFound(f"{self._url(key)} not found ({action}: {code})") from e
            if code in INVALID_PART_CODES:
                raise InvalidInput(
                    f"S3 {action} on {self._url(key)} rejected the part list: {code}; "
                    "upload the listed parts again"
                ) from e
            raise StorageError(
                f"S3 {action} on {self._url(key)} failed: {code} {e}; "
                "check the bucket, credentials and AWS_ENDPOINT_URL"
            ) from e
        except BotoCoreError as e:
            raise StorageError(
                f"S3 {action} on {self._url(key)} failed: {e}; check that the S3 endpoint is up"
            ) from e

    def has_blob(self, digest: str) -> bool:
        try:
            self.blob_size(digest)
        except NotFound:
            return False
        return True

    def blob_size(self, digest: str) -> int:
        key = self._key(blob_key(digest))
        with self._translate("head_object", key):
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        return int(response["ContentLength"])

    def open_blob(self, digest: str, *, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        key = self._key(blob_key(digest))
        # Request now, so that a missing blob raises NotFound here and not on the first next().
        with self._translate("get_object", key):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        return self._iter_body(body, key, chunk_size)

    def _iter_body(self, body: Any, key: str, chunk_size: int) -> Iterator[bytes]:
        try:
            with self._translate("reading", key):
                yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def read_range(self, digest: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise InvalidInput(
                f"invalid range start={start} length={length}; both must be non-negative"
            )
        key = self._key(blob_key(digest))
        if length == 0:
            self.blob_size(digest)
            return b""
        try:
            with self._translate("get_object", key):
                response = self.client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
                )
                return bytes(response["Body"].read())
        except StorageError as e:
            # A range that starts past the end is not an error for a file read either.
            if isinstance(e.__cause__, ClientError) and _error_code(e.__cause__) == "InvalidRange":
                return b""
            raise

    def put_blob(self, digest: str, chunks: Iterable[bytes], *, max_bytes: int) -> int:
        """Store a blob from a stream. A blob already present is kept and ``chunks`` is not read.

        The stream goes to a staging key, as one put_object when it fits in
        one 8 MiB buffer and as a multipart upload otherwise.
        """
        check_digest(digest)
        if self.has_blob(digest):
            return self.blob_size(digest)
        upload_id = uuid.uuid4().hex
        staging_key = self._staging_key(upload_id)
        size, computed = _StreamingUpload(self, staging_key).run(chunks, max_bytes=max_bytes)
        self._publish(staging_key, digest, computed=computed, size=size, source="uploaded bytes")
        logger.info("stored blob %s (%d bytes)", digest, size)
        return size

    def _publish(
        self, staging_key: str, digest: str, *, computed: str, size: int, source: str
    ) -> None:
        """Copy verified staged bytes to their blob key, then delete the staged object.

        The staged object is deleted on a digest mismatch too.
        """
        try:
            if computed != digest:
                raise DigestMismatch(
                    f"{source} hash to {computed}, not the declared {digest}; "
                    "the staged bytes were removed, upload the blob again"
                )
            self._copy(staging_key, self._key(blob_key(digest)), size=size)
        finally:
            self._delete_quietly(staging_key)

    def _copy(self, source: str, target: str, *, size: int) -> None:
        if size <= self.max_copy_object_bytes:
            with self._translate("copy_object", target):
                self.client.copy_object(
                    Bucket=self.bucket,
                    Key=target,
                    CopySource={"Bucket": self.bucket, "Key": source},
                )
            return
        self._copy_in_parts(source, target, size=size)

    def _copy_in_parts(self, source: str, target: str, *, size: int) -> None:
        # copy_object refuses objects above 5 GiB, so copy ranges into a new multipart upload.
        with self._translate("create_multipart_upload", target):
            handle = self.client.create_multipart_upload(Bucket=self.bucket, Key=target)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, self.copy_part_bytes), start=1):
                end = min(start + self.copy_part_bytes, size) - 1
                with self._translate("upload_part_copy", target):
                    response = self.client.upload_part_copy(
                        Bucket=self.bucket,
                        Key=target,
                        UploadId=handle,
                        PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": source},
                        CopySourceRange=f"bytes={start}-{end}",
                    )
                parts.append({"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]})
            with self._translate("complete_multipart_upload", target):
                self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=target,
                    UploadId=handle,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            self._abort_quietly(target, handle)
            raise

    def _delete(self, key: str) -> None:
        with self._translate("delete_object", key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def _delete_quietly(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError):
            # The caller is already failing or done. gc removes what is left under uploads/.
            logger.warning("could not delete %s", self._url(key), exc_info=True)

    def _abort_quietly(self, key: str, handle: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=handle)
        except (ClientError, BotoCoreError):
            # The caller is already failing, so keep its error. gc removes what is left.
            logger.warning("could not abort multipart upload at %s", self._url(key), exc_info=True)

    def start_upload(self, upload_id: str) -> str:
        key = self._staging_key(upload_id)
        with self._translate("create_multipart_upload", key):
            response = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        return str(response["UploadId"])

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
        """Stage one part, spooled to a temporary file because upload_part needs its length."""
        check_part_number(part_number)
        key = self._staging_key(upload_id)
        with (
            self._running.hash_part(upload_id, part_number, offset=offset) as hasher,
            _spool(chunks, hasher, max_bytes=max_bytes) as file,
        ):
            with self._translate(f"upload_part {part_number}", key):
                response = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=handle,
                    PartNumber=part_number,
                    Body=file,
                    ContentLength=hasher.size,
                )
            info = PartInfo(part_number=part_number, size=hasher.size, etag=response["ETag"])
            hasher.commit(info)
        return info

    def complete_upload(
        self, upload_id: str, handle: str, parts: list[PartInfo], digest: str
    ) -> int:
        """Assemble the parts, verify the sha256, then publish the object.

        The running sha256 verifies an upload whose parts arrived in order.
        Otherwise the object is read back once: S3's own checksums of a
        multipart object are checksums of the part checksums, not a sha256 of
        the content.
        """
        check_digest(digest)
        ordered = sorted_parts(parts)
        _check_part_sizes(upload_id, ordered)
        key = self._staging_key(upload_id)
        if self.has_blob(digest):
            self.abort_upload(upload_id, handle)
            return self.blob_size(digest)
        running = self._running.digest_of(upload_id, ordered)
        if running is not None and running != digest:
            self.abort_upload(upload_id, handle)
            raise DigestMismatch(
                f"upload {upload_id} hashes to {running}, not the declared {digest}; "
                "the staged parts were removed, upload the blob again"
            )
        with self._translate("complete_multipart_upload", key):
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=handle,
                MultipartUpload={
                    "Parts": [{"PartNumber": p.part_number, "ETag": p.etag} for p in ordered]
                },
            )
        self._running.forget(upload_id)
        if running is None:
            logger.info("upload %s: parts did not all arrive in order; reading it back", upload_id)
            size, computed = self._hash_object(key)
        else:
            size, computed = sum(part.size for part in ordered), running
        self._publish(key, digest, computed=computed, size=size, source=f"upload {upload_id}")
        logger.info("stored blob %s (%d bytes) from upload %s", digest, size, upload_id)
        return size

    def _hash_object(self, key: str) -> tuple[int, str]:
        sha256 = hashlib.sha256()
        size = 0
        with self._translate("get_object", key):
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                    sha256.update(chunk)
                    size += len(chunk)
            finally:
                body.close()
        return size, f"sha256:{sha256.hexdigest()}"

    def abort_upload(self, upload_id: str, handle: str) -> None:
        """Abort the upload and delete its staged bytes.

        With an empty ``handle`` (garbage collection of a put_blob that never
        finished), every multipart upload in flight at the staging key is aborted.
        """
        key = self._staging_key(upload_id)
        self._running.forget(upload_id)
        for upload_handle in [handle] if handle else self._multipart_handles(key):
            try:
                with self._translate("abort_multipart_upload", key):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_handle
                    )
            except NotFound:
                pass  # already completed or aborted
        self._delete(key)

    def _multipart_handles(self, key: str) -> list[str]:
        paginator = self.client.get_paginator("list_multipart_uploads")
        handles = []
        with self._translate("list_multipart_uploads", key):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=key):
                handles += [u["UploadId"] for u in page.get("Uploads", []) if u["Key"] == key]
        return handles

    def delete_blob(self, digest: str) -> None:
        key = self._key(blob_key(digest))
        self._delete(key)
        logger.info("deleted blob %s", digest)

    def quarantine_blob(self, digest: str) -> str:
        source = self._key(blob_key(digest))
        target = self._key(quarantine_key(digest, datetime.now(UTC)))
        size = self.blob_size(digest)
        # NOTE: S3 has no rename. A push of this digest between the copy and the
        # delete finds the object present and skips its upload, so the blob ends
        # up missing; fsck then reports it as missing and the next push stores it.
        self._copy(source, target, size=size)
        self._delete(source)
        logger.warning("moved damaged blob %s to %s", digest, self._url(target))
        return self._url(target)

    def iter_blobs(self) -> Iterator[BlobInfo]:
        listing_prefix = self._key("blobs/sha256/")
        for item in self._list_objects(listing_prefix):
            digest = "sha256:" + item["Key"].rsplit("/", 1)[-1]
            if DIGEST_PATTERN.match(digest) and self._key(blob_key(digest)) == item["Key"]:
                yield BlobInfo(
                    digest=digest, size=int(item["Size"]), modified_at=item["LastModified"]
                )

    def _list_objects(self, listing_prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        with self._translate("list_objects_v2", listing_prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=listing_prefix):
                yield from page.get("Contents", [])

    def iter_staged_uploads(self) -> Iterator[StagedUpload]:
        """Yield staged objects and multipart uploads in flight, with their latest activity."""
        latest: dict[str, datetime] = {}
        for upload_id, when in self._staged_activity():
            if upload_id not in latest or when > latest[upload_id]:
                latest[upload_id] = when
        for upload_id in sorted(latest):
            yield StagedUpload(upload_id=upload_id, modified_at=latest[upload_id])

    def _staged_activity(self) -> Iterator[tuple[str, datetime]]:
        listing_prefix = self._key("uploads/")
        for item in self._list_objects(listing_prefix):
            upload_id = self._upload_id_of(item["Key"])
            if upload_id:
                yield upload_id, item["LastModified"]
        paginator = self.client.get_paginator("list_multipart_uploads")
        with self._translate("list_multipart_uploads", listing_prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=listing_prefix):
                for upload in page.get("Uploads", []):
                    upload_id = self._upload_id_of(upload["Key"])
                    if upload_id:
                        yield upload_id, self._last_part_time(upload)

    def _upload_id_of(self, key: str) -> str | None:
        parts = key[len(self.prefix) :].split("/")
        if len(parts) == 3 and parts[0] == "uploads" and UPLOAD_ID_PATTERN.match(parts[1]):
            return parts[1]
        return None

    def _last_part_time(self, upload: dict[str, Any]) -> datetime:
        # Initiated alone would make an upload that is still receiving parts look old.
        times: list[datetime] = [upload["Initiated"]]
        paginator = self.client.get_paginator("list_parts")
        pages = paginator.paginate(
            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
        )
        try:
            with self._translate("list_parts", upload["Key"]):
                for page in pages:
                    times += [part["LastModified"] for part in page.get("Parts", [])]
        except NotFound:
            pass  # completed or aborted since the listing
        return max(times)

    def presign_get(
        self, digest: str, *, expires_in: int, filename: str | None = None
    ) -> str | None:
        """Return a presigned GET URL without checking that the blob exists."""
        key = self._key(blob_key(digest))
        params: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if filename is not None:
            params["ResponseContentDisposition"] = _content_disposition(filename)
        with self._translate("generate_presigned_url", key):
            url = self.client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_in
            )
        return str(url)


def _check_part_sizes(upload_id: str, parts: list[PartInfo]) -> None:
    for part in parts[:-1]:
        if part.size < MIN_PART_BYTES:
            raise InvalidInput(
                f"part {part.part_number} of upload {upload_id} has {part.size} bytes; S3 needs "
                f"every part except the last to have at least {MIN_PART_BYTES} bytes (5 MiB), "
                "so upload larger parts"
            )


class _StreamingUpload:
    """Stream chunks of unknown total length to one staging key, hashing on the way."""

    def __init__(self, store: S3BlobStore, key: str) -> None:
        self.store = store
        self.key = key
        self.handle: str | None = None
        self.parts: list[dict[str, Any]] = []

    def run(self, chunks: Iterable[bytes], *, max_bytes: int) -> tuple[int, str]:
        sha256 = hashlib.sha256()
        size = 0
        buffer = bytearray()
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    _raise_too_large(max_bytes)
                sha256.update(chunk)
                buffer += chunk
                while len(buffer) >= PUT_PART_BYTES:
                    self._send_part(bytes(buffer[:PUT_PART_BYTES]))
                    del buffer[:PUT_PART_BYTES]
            self._finish(bytes(buffer))
        except BaseException:
            self._discard()
            raise
        return size, f"sha256:{sha256.hexdigest()}"

    def _send_part(self, data: bytes) -> None:
        client, bucket = self.store.client, self.store.bucket
        if self.handle is None:
            with self.store._translate("create_multipart_upload", self.key):
                self.handle = client.create_multipart_upload(Bucket=bucket, Key=self.key)[
                    "UploadId"
                ]
        number = len(self.parts) + 1
        with self.store._translate(f"upload_part {number}", self.key):
            response = client.upload_part(
                Bucket=bucket, Key=self.key, UploadId=self.handle, PartNumber=number, Body=data
            )
        self.parts.append({"PartNumber": number, "ETag": response["ETag"]})

    def _finish(self, rest: bytes) -> None:
        client, bucket = self.store.client, self.store.bucket
        if self.handle is None:
            with self.store._translate("put_object", self.key):
                client.put_object(Bucket=bucket, Key=self.key, Body=rest)
            return
        if rest:
            self._send_part(rest)
        with self.store._translate("complete_multipart_upload", self.key):
            client.complete_multipart_upload(
                Bucket=bucket,
                Key=self.key,
                UploadId=self.handle,
                MultipartUpload={"Parts": self.parts},
            )

    def _discard(self) -> None:
        if self.handle is not None:
            self.store._abort_quietly(self.key, self.handle)
        self.store._delete_quietly(self.key)


def _raise_too_large(max_bytes: int) -> NoReturn:
    raise PayloadTooLarge(
        f"upload exceeds the limit of {max_bytes} bytes; split it into parts or raise the limit"
    )


@contextmanager
def _spool(chunks: Iterable[bytes], hasher: PartHasher, *, max_bytes: int) -> Iterator[IO[bytes]]:
    """Spool chunks to a temporary file (in memory up to 8 MiB), hashing them; yield the file."""
    with tempfile.SpooledTemporaryFile(max_size=PUT_PART_BYTES) as file:
        for chunk in chunks:
            if hasher.size + len(chunk) > max_bytes:
                _raise_too_large(max_bytes)
            hasher.update(chunk)
            file.write(chunk)
        file.seek(0)
        yield file
