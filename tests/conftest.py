"""Fixtures shared by every test package."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

# Fake credentials, so that no test can sign a request with real ones.
AWS_TEST_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _test_s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Yield the endpoint URL of a moto S3 server on a free loopback port.

    The fake AWS credentials and region stay set in the environment while it runs.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in AWS_TEST_ENVIRONMENT.items():
            patch.setenv(name, value)
        port = _free_loopback_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[str]:
    """Yield the name of a new, empty bucket on ``s3_server``, deleted after the test."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    client = _test_s3_client(s3_server)
    client.create_bucket(Bucket=name)
    yield name
    _delete_bucket(client, name)


def _delete_bucket(s3: Any, name: str) -> None:
    # moto keeps objects in memory for the whole session, so free them.
    uploads = s3.list_multipart_uploads(Bucket=name).get("Uploads", [])
    for upload in uploads:
        s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=name):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)


# Databases, stores and a live API for the registry tests.
pytest_plugins = ["tests.support.fixtures"]
