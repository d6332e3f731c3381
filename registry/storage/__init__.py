"""Content-addressed blob stores: a local directory or an S3 bucket."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import boto3

from registry.errors import InvalidInput
from registry.storage.base import BlobStore, blob_key
from registry.storage.local import LocalBlobStore
from registry.storage.s3 import S3BlobStore

__all__ = ["BlobStore", "LocalBlobStore", "S3BlobStore", "blob_key", "open_blob_store"]

ACCEPTED_URLS = "file:///absolute/path or s3://bucket/prefix"


def open_blob_store(url: str) -> BlobStore:
    """Open the blob store at ``file:///abs/path`` or ``s3://bucket/prefix``.

    S3 stores use a boto3 client configured from the usual ``AWS_*`` variables;
    ``AWS_ENDPOINT_URL`` selects an S3-compatible server such as MinIO.
    Raises InvalidInput for any other URL.
    """
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        return _open_local(url, parsed)
    if parsed.scheme == "s3":
        return _open_s3(url, parsed)
    raise InvalidInput(f"unsupported storage URL {url!r}; use {ACCEPTED_URLS}")


def _open_local(url: str, parsed: urllib.parse.SplitResult) -> LocalBlobStore:
    if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
        raise InvalidInput(
            f"storage URL {url!r} must name an absolute local path, as in file:///var/lib/blobs"
        )
    return LocalBlobStore(Path(urllib.parse.unquote(parsed.path)))


def _open_s3(url: str, parsed: urllib.parse.SplitResult) -> S3BlobStore:
    if not parsed.netloc:
        raise InvalidInput(f"storage URL {url!r} names no bucket; use s3://bucket/prefix")
    client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None)
    return S3BlobStore(client, parsed.netloc, parsed.path.strip("/"))
