"""S3BlobStore against a moto S3 server on loopback: the shared contract plus S3 specifics."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from registry.errors import InvalidInput, StorageError
from registry.storage import S3BlobStore, open_blob_store
from registry.storage.base import blob_key
from tests.conftest import _free_loopback_port
from tests.registry.storage.contract import (
    LIMIT,
    PART_BYTES,
    BlobStoreContract,
    chunked,
    digest_of,
)

MiB = 1024 * 1024


def make_client(endpoint: str, **config: Any) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(**config) if config else None,
    )


@pytest.fixture
def s3_client(s3_server: str) -> Any:
    return make_client(s3_server)


class TestS3BlobStore(BlobStoreContract):
    @pytest.fixture
    def blob_store(self, s3_client: Any, s3_bucket: str) -> S3BlobStore:
        return S3BlobStore(s3_client, s3_bucket, "registry/blobs")


def test_s3_key_layout_under_prefix(s3_client: Any, s3_bucket: str) -> None:
    store = S3BlobStore(s3_client, s3_bucket, "/team-a/")
    digest = digest_of(b"layout")

    store.put_blob(digest, [b"layout"], max_bytes=LIMIT)

    keys = [item["Key"] for item in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == [f"team-a/{blob_key(digest)}"]


def test_s3_large_put_blob_uses_multipart(s3_client: Any, s3_bucket: str) -> None:
    store = S3BlobStore(s3_client, s3_bucket)
    data = os.urandom(17 * MiB)
    digest = digest_of(data)

    size = store.put_blob(digest, chunked(data, MiB), max_bytes=LIMIT)

    assert size == len(data)
    assert b"".join(store.open_blob(digest)) == data
    assert s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_s3_large_blob_copied_in_parts(s3_client: Any, s3_bucket: str) -> None:
    # Lower the copy_object limit so the upload_part_copy path runs on 11 MiB.
    store = S3BlobStore(
        s3_client, s3_bucket, copy_part_bytes=PART_BYTES, max_copy_object_bytes=6 * MiB
    )
    data = os.urandom(11 * MiB)
    digest = digest_of(data)

    store.put_blob(digest, chunked(data, MiB), max_bytes=LIMIT)

    assert b"".join(store.open_blob(digest)) == data
    keys = [item["Key"] for item in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == [blob_key(digest)]


def test_s3_small_parts_rejected(s3_client: Any, s3_bucket: str) -> None:
    store = S3BlobStore(s3_client, s3_bucket)
    upload_id = os.urandom(16).hex()
    handle = store.start_upload(upload_id)
    parts = [
        store.put_part(
            upload_id, handle, number, [b"x" * 1000], max_bytes=LIMIT, offset=(number - 1) * 1000
        )
        for number in (1, 2)
    ]

    with pytest.raises(InvalidInput) as caught:
        store.complete_upload(upload_id, handle, parts, digest_of(b"x" * 2000))

    assert "part 1" in caught.value.detail
    assert "5 MiB" in caught.value.detail
    store.abort_upload(upload_id, handle)


def test_s3_stale_etag_rejected(s3_client: Any, s3_bucket: str) -> None:
    store = S3BlobStore(s3_client, s3_bucket)
    upload_id = os.urandom(16).hex()
    handle = store.start_upload(upload_id)
    part = store.put_part(upload_id, handle, 1, [b"only part"], max_bytes=LIMIT, offset=0)
    stale = dataclasses.replace(part, etag='"00000000000000000000000000000000"')

    with pytest.raises(InvalidInput) as caught:
        store.complete_upload(upload_id, handle, [stale], digest_of(b"only part"))

    assert "InvalidPart" in caught.value.detail
    store.abort_upload(upload_id, handle)


def test_s3_presign_downloads_bytes(s3_client: Any, s3_bucket: str) -> None:
    store = S3BlobStore(s3_client, s3_bucket, "p")
    data = os.urandom(4096)
    digest = digest_of(data)
    store.put_blob(digest, [data], max_bytes=LIMIT)

    url = store.presign_get(digest, expires_in=60, filename="adapter_model.safetensors")
    assert url is not None
    response = httpx.get(url)

    assert response.status_code == 200
    assert response.content == data
    assert 'filename="adapter_model.safetensors"' in response.headers["content-disposition"]


def test_s3_presign_without_filename(s3_client: Any, s3_bucket: str) -> None:
    store = S3BlobStore(s3_client, s3_bucket)
    digest = digest_of(b"plain")
    store.put_blob(digest, [b"plain"], max_bytes=LIMIT)

    url = store.presign_get(digest, expires_in=60)
    assert url is not None

    assert httpx.get(url).content == b"plain"


@pytest.fixture
def stopped_s3_store() -> Iterator[S3BlobStore]:
    port = _free_loopback_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = make_client(endpoint, retries={"max_attempts": 1}, connect_timeout=2)
    client.create_bucket(Bucket="stopped-server")
    server.stop()
    yield S3BlobStore(client, "stopped-server")


def test_s3_stopped_server_storage_error(stopped_s3_store: S3BlobStore) -> None:
    digest = digest_of(b"unreachable")

    with pytest.raises(StorageError) as caught:
        stopped_s3_store.put_blob(digest, [b"unreachable"], max_bytes=LIMIT)

    assert "s3://stopped-server/" in caught.value.detail
    with pytest.raises(StorageError):
        stopped_s3_store.blob_size(digest)
    with pytest.raises(StorageError):
        list(stopped_s3_store.iter_blobs())


def test_s3_missing_bucket_storage_error(s3_client: Any) -> None:
    store = S3BlobStore(s3_client, "no-such-bucket-here")

    with pytest.raises(StorageError) as caught:
        store.put_blob(digest_of(b"x"), [b"x"], max_bytes=LIMIT)

    assert "NoSuchBucket" in caught.value.detail


def test_open_blob_store_s3_url(
    s3_server: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    store = open_blob_store(f"s3://{s3_bucket}/tenant/blobs")
    digest = digest_of(b"via url")

    store.put_blob(digest, [b"via url"], max_bytes=LIMIT)

    assert isinstance(store, S3BlobStore)
    assert store.prefix == "tenant/blobs/"
    assert b"".join(store.open_blob(digest)) == b"via url"
