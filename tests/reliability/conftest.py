"""Fixtures of the reliability tests: a tiny base model, many distinct adapters, store access."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file
from sqlalchemy import update
from sqlalchemy.engine import Engine

from registry.db.base import utcnow
from registry.db.models import Blob, UploadSession
from registry.storage import LocalBlobStore, S3BlobStore
from registry.storage.base import BlobStore, blob_key
from tests.support.models import save_lora_adapter, save_tiny_llama

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("reliability-base"))


@pytest.fixture(scope="session")
def tiny_lora(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lora_adapter(tiny_base, tmp_path_factory.mktemp("reliability-lora"), seed=1)


def make_variants(lora: Path, root: Path, count: int, *, start: int = 1) -> list[Path]:
    """Write ``count`` adapters with the config of ``lora`` and distinct weights.

    Variant ``k`` adds ``k`` to every weight, which keeps the shapes (so each one
    validates against the base model) and makes every manifest digest distinct.
    """
    tensors = load_file(lora / "adapter_model.safetensors")
    config = (lora / "adapter_config.json").read_bytes()
    variants = []
    for offset in range(start, start + count):
        directory = root / f"variant-{offset}"
        directory.mkdir(parents=True)
        (directory / "adapter_config.json").write_bytes(config)
        save_file(
            {name: value + offset for name, value in tensors.items()},
            directory / "adapter_model.safetensors",
        )
        variants.append(directory)
    return variants


def object_path_or_key(store: BlobStore, digest: str) -> str:
    """Return the file path or the S3 key that stores ``digest``."""
    if isinstance(store, LocalBlobStore):
        return str(store.root / blob_key(digest))
    assert isinstance(store, S3BlobStore)
    return store.prefix + blob_key(digest)


def read_object(store: BlobStore, digest: str) -> bytes:
    return b"".join(store.open_blob(digest))


def write_object(store: BlobStore, digest: str, data: bytes) -> None:
    """Overwrite the stored object of ``digest`` behind the registry's back."""
    location = object_path_or_key(store, digest)
    if isinstance(store, LocalBlobStore):
        Path(location).write_bytes(data)
        return
    assert isinstance(store, S3BlobStore)
    store.client.put_object(Bucket=store.bucket, Key=location, Body=data)


def flip_byte(store: BlobStore, digest: str) -> None:
    """Invert one byte in the middle of a stored blob."""
    data = bytearray(read_object(store, digest))
    data[len(data) // 2] ^= 0xFF
    write_object(store, digest, bytes(data))


def age_rows(engine: Engine, *, seconds: int) -> None:
    """Move the timestamps of every blob row and upload session ``seconds`` into the past."""
    moment = utcnow() - timedelta(seconds=seconds)
    with engine.begin() as connection:
        connection.execute(update(Blob).values(created_at=moment))
        connection.execute(update(UploadSession).values(created_at=moment, updated_at=moment))


def age_local_objects(store: BlobStore, *, seconds: int) -> None:
    """Move the modification time of every file of a local store into the past."""
    assert isinstance(store, LocalBlobStore)
    past = utcnow().timestamp() - seconds
    for directory, _, names in os.walk(store.root):
        for name in [*names, "."]:
            os.utime(Path(directory) / name, (past, past))


def s3_client(store: BlobStore) -> Any:
    assert isinstance(store, S3BlobStore)
    return store.client
