"""LocalBlobStore: the shared contract plus file layout, atomicity and concurrent writers."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from registry.errors import InvalidInput, NotFound
from registry.storage import LocalBlobStore, open_blob_store
from registry.storage.base import blob_key
from tests.registry.storage.contract import LIMIT, BlobStoreContract, digest_of

REPOSITORY_ROOT = Path(__file__).resolve().parents[3]


class TestLocalBlobStore(BlobStoreContract):
    @pytest.fixture
    def blob_store(self, tmp_path: Path) -> LocalBlobStore:
        return LocalBlobStore(tmp_path / "store")


def test_local_blob_layout(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    digest = digest_of(b"layout")

    store.put_blob(digest, [b"layout"], max_bytes=LIMIT)

    hex_digest = digest.removeprefix("sha256:")
    path = tmp_path / "blobs" / "sha256" / hex_digest[:2] / hex_digest
    assert path.read_bytes() == b"layout"
    assert path == tmp_path / blob_key(digest)
    assert os.listdir(tmp_path / "uploads") == []


def test_local_presign_returns_none(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    digest = digest_of(b"x")
    store.put_blob(digest, [b"x"], max_bytes=LIMIT)

    assert store.presign_get(digest, expires_in=60, filename="x.bin") is None


def test_local_mismatch_keeps_existing_path_free(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    declared = digest_of(b"declared")

    with pytest.raises(InvalidInput):
        store.put_blob(declared, [b"other bytes"], max_bytes=LIMIT)

    assert not (tmp_path / blob_key(declared)).exists()


def test_local_iter_ignores_foreign_files(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    digest = digest_of(b"kept")
    store.put_blob(digest, [b"kept"], max_bytes=LIMIT)
    (tmp_path / "blobs" / "sha256" / "zz").mkdir()
    (tmp_path / "blobs" / "sha256" / "zz" / "notes.txt").write_text("junk")
    (tmp_path / "uploads" / "not-an-upload").mkdir()

    assert [blob.digest for blob in store.iter_blobs()] == [digest]
    assert list(store.iter_staged_uploads()) == []


def test_local_complete_rejects_size_mismatch(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    upload_id = os.urandom(16).hex()
    handle = store.start_upload(upload_id)
    part = store.put_part(upload_id, handle, 1, [b"abc"], max_bytes=LIMIT, offset=0)
    stale = dataclasses.replace(part, size=2)

    with pytest.raises(InvalidInput) as caught:
        store.complete_upload(upload_id, handle, [stale], digest_of(b"abc"))

    assert "3 bytes staged, not 2" in caught.value.detail


def test_local_put_part_after_abort_not_found(tmp_path: Path) -> None:
    # Not in the shared contract: moto 5.2 responds with 500 here, where S3 sends NoSuchUpload.
    store = LocalBlobStore(tmp_path)
    upload_id = os.urandom(16).hex()
    handle = store.start_upload(upload_id)
    store.abort_upload(upload_id, handle)

    with pytest.raises(NotFound):
        store.put_part(upload_id, handle, 1, [b"late"], max_bytes=LIMIT, offset=0)


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from registry.storage.local import LocalBlobStore

    root, digest, start_at = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    data = Path(sys.argv[4]).read_bytes()

    def slow_chunks():
        for offset in range(0, len(data), 256 * 1024):
            time.sleep(0.01)
            yield data[offset : offset + 256 * 1024]

    time.sleep(max(0.0, start_at - time.time()))
    print(LocalBlobStore(root).put_blob(digest, slow_chunks(), max_bytes=1 << 30))
    """
)


def test_local_concurrent_writers_same_digest(tmp_path: Path) -> None:
    data = os.urandom(8 * 1024 * 1024)
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    digest = digest_of(data)
    root = tmp_path / "store"
    start_at = f"{time.time() + 1.5:.3f}"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), digest, start_at, str(source)],
            cwd=REPOSITORY_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [writer.communicate(timeout=60) for writer in writers]

    assert [writer.returncode for writer in writers] == [0, 0], results
    assert [out.strip() for out, _ in results] == [str(len(data))] * 2
    assert (root / blob_key(digest)).read_bytes() == data
    assert os.listdir(root / "uploads") == []


def test_open_blob_store_file_url(tmp_path: Path) -> None:
    store = open_blob_store(tmp_path.as_uri())

    assert isinstance(store, LocalBlobStore)
    assert store.root == tmp_path


@pytest.mark.parametrize(
    "url", ["file://relative/path", "http://127.0.0.1/blobs", "blobs", "s3://"]
)
def test_open_blob_store_rejects_url(url: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        open_blob_store(url)

    assert repr(url) in caught.value.detail
