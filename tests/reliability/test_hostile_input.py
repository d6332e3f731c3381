"""Hostile input over real HTTP: every fault gets a 4xx that names it, and nothing is stored.

Blobs are uploaded before a commit names them, so a rejected commit can leave
an unreferenced blob behind (``gc`` removes it after the grace period). What
must never appear is a version, an adapter, an alias or a base model row, or
an object for bytes that failed verification.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from registry.api.streaming import BATCH_BYTES
from registry.config import Settings
from registry.db.models import Adapter, AdapterVersion, Alias, BaseModelRecord, Blob
from tests.support.fixtures import LiveRegistry, MiB

MAX_BLOB_BYTES = 1 * MiB
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def registry_settings(tmp_path: Path, db_url: str) -> Settings:
    """A registry that accepts files of at most 1 MiB, so the size limit is cheap to reach."""
    return Settings(
        home=tmp_path / "home",
        database_url=db_url,
        storage_url="(test store)",
        part_size=5 * MiB,
        max_blob_bytes=MAX_BLOB_BYTES,
    )


@pytest.fixture
def registry(live_registry: LiveRegistry, tiny_base: Path) -> LiveRegistry:
    live_registry.client.register_base_model("tiny", tiny_base)
    return live_registry


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def api(registry: LiveRegistry, path: str) -> str:
    return f"{registry.url}/api/v1{path}"


def path_segment(value: str) -> str:
    """Percent-encode every byte, dots included, so no client normalizes '..' away."""
    return "".join(f"%{byte:02X}" for byte in value.encode())


def put_blob(registry: LiveRegistry, data: bytes) -> dict[str, Any]:
    digest = digest_of(data)
    response = httpx.put(api(registry, f"/blobs/{digest}"), content=data)
    assert response.status_code == 201, response.text
    return {"digest": digest, "size": len(data)}


def commit(
    registry: LiveRegistry, files: dict[str, bytes], *, name: str = "chat"
) -> httpx.Response:
    """Upload ``files`` as blobs and commit them as a version of adapter ``name``."""
    entries = [{"path": path, **put_blob(registry, data)} for path, data in files.items()]
    return httpx.post(
        api(registry, f"/adapters/{path_segment(name)}/versions"),
        json={"base_model": "tiny", "files": entries},
        timeout=30,
    )


def row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            model.__name__: connection.scalar(select(func.count()).select_from(model)) or 0
            for model in (Adapter, AdapterVersion, Alias, BaseModelRecord)
        }


def assert_rejected(response: httpx.Response, status: int, kind: str, *fragments: str) -> None:
    """Check the status, the error kind and that the detail names every fragment."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == kind, body
    for fragment in fragments:
        assert fragment in body["detail"], (fragment, body["detail"])


def lora_files(lora: Path) -> dict[str, bytes]:
    return {CONFIG: (lora / CONFIG).read_bytes(), WEIGHTS: (lora / WEIGHTS).read_bytes()}


def with_config(lora: Path, **changes: Any) -> dict[str, bytes]:
    config = json.loads((lora / CONFIG).read_text())
    config.update(changes)
    return {**lora_files(lora), CONFIG: json.dumps(config).encode()}


# Names and paths


# Name, path and weights checks run before any database or store access, so the
# tables run on SQLite only. Digest and size checks run on both stores.
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

HOSTILE_NAMES = [
    "..",
    "a..b",
    ".hidden",
    "-flag",
    "a\x00b",
    "a\nb",
    "a\x1bb",
    "a b",
    "é",
    "x" * 129,
]


@SQLITE_ONLY
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_adapter_name_rejected(registry: LiveRegistry, tiny_lora: Path, name: str) -> None:
    before = row_counts(registry.engine)

    response = commit(registry, lora_files(tiny_lora), name=name)

    assert_rejected(response, 422, "InvalidInput", "invalid adapter name", repr(name))
    assert row_counts(registry.engine) == before


@SQLITE_ONLY
@pytest.mark.parametrize("alias", ["..", "1abc", "a\x00", "a\nb", "a/b", "x" * 129])
def test_hostile_alias_rejected(registry: LiveRegistry, tiny_lora: Path, alias: str) -> None:
    assert commit(registry, lora_files(tiny_lora)).status_code == 201
    before = row_counts(registry.engine)

    response = httpx.put(
        api(registry, f"/adapters/chat/aliases/{path_segment(alias)}"), json={"version": 1}
    )

    assert 400 <= response.status_code < 500, response.text
    if response.status_code == 422:
        assert_rejected(response, 422, "InvalidInput", "invalid alias", repr(alias))
    assert row_counts(registry.engine) == before


@SQLITE_ONLY
@pytest.mark.parametrize(
    "path",
    [
        "../adapter_config.json",
        "/etc/passwd",
        "sub/../../x",
        "a\x00b",
        "adapter_config.json\n",
        "dir//x",
        "./x",
        "x" * 300,
    ],
)
def test_hostile_file_path_rejected(registry: LiveRegistry, tiny_lora: Path, path: str) -> None:
    files = lora_files(tiny_lora)
    before = row_counts(registry.engine)
    entries = [{"path": name, **put_blob(registry, data)} for name, data in files.items()]
    entries.append({"path": path, **put_blob(registry, b"{}")})

    response = httpx.post(
        api(registry, "/adapters/chat/versions"), json={"base_model": "tiny", "files": entries}
    )

    assert response.status_code == 422, response.text
    assert response.json()["error"] in ("InvalidInput", "InvalidAdapter")
    assert repr(path)[:40] in response.json()["detail"]
    assert row_counts(registry.engine) == before


def test_hostile_base_model_name_rejected(registry: LiveRegistry) -> None:
    before = row_counts(registry.engine)
    body = {"name": "../../etc", "manifest": {}, "files": []}

    response = httpx.post(api(registry, "/base-models"), json=body)

    assert_rejected(response, 422, "InvalidInput", "'../../etc'")
    assert row_counts(registry.engine) == before


# Weights files


def test_pickle_named_safetensors_rejected(registry: LiveRegistry, tiny_lora: Path) -> None:
    tensors = load_file(tiny_lora / WEIGHTS)
    pickled = pickle.dumps({name: value.tolist() for name, value in tensors.items()})
    before = row_counts(registry.engine)

    response = commit(registry, {**lora_files(tiny_lora), WEIGHTS: pickled})

    assert_rejected(response, 422, "InvalidAdapter", WEIGHTS, "pickle")
    assert row_counts(registry.engine) == before


def test_pickled_weights_file_rejected(registry: LiveRegistry, tiny_lora: Path) -> None:
    files = {CONFIG: lora_files(tiny_lora)[CONFIG], "adapter_model.bin": pickle.dumps({})}

    response = commit(registry, files)

    assert 400 <= response.status_code < 500, response.text
    assert "adapter_model.bin" in response.json()["detail"]
    assert row_counts(registry.engine)["AdapterVersion"] == 0


def test_oversized_header_length_rejected(registry: LiveRegistry, tiny_lora: Path) -> None:
    weights = struct.pack("<Q", 2**40) + b'{"__metadata__":{}}'

    response = commit(registry, {**lora_files(tiny_lora), WEIGHTS: weights})

    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"] in ("InvalidAdapter", "PayloadTooLarge")
    assert WEIGHTS in response.json()["detail"]
    assert str(2**40) in response.json()["detail"]
    assert row_counts(registry.engine)["AdapterVersion"] == 0


def test_truncated_weights_rejected(registry: LiveRegistry, tiny_lora: Path) -> None:
    weights = (tiny_lora / WEIGHTS).read_bytes()

    response = commit(registry, {**lora_files(tiny_lora), WEIGHTS: weights[: len(weights) - 7]})

    assert_rejected(response, 422, "InvalidAdapter", WEIGHTS)
    assert row_counts(registry.engine)["AdapterVersion"] == 0


def _weights_payloads() -> st.SearchStrategy[bytes]:
    """Malformed safetensors files: random bytes, random headers, broken JSON and entries."""
    header_value = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=12,
    )
    tensor_entry = st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "X9", ""]),
            "shape": st.lists(st.integers(-3, 2**33), max_size=3),
            "data_offsets": st.lists(st.integers(-5, 2**40), max_size=3),
        }
    )
    header_dict = st.dictionaries(
        st.sampled_from(
            [
                "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
                "__metadata__",
                "x",
            ]
        ),
        tensor_entry | header_value,
        max_size=3,
    )

    def framed(header: bytes, declared: int | None, tail: bytes) -> bytes:
        length = len(header) if declared is None else declared
        return struct.pack("<Q", length) + header + tail

    json_header = header_dict.map(lambda value: json.dumps(value).encode())
    raw_header = st.binary(max_size=64)
    return st.one_of(
        st.binary(max_size=64),
        st.builds(
            framed,
            json_header | raw_header,
            st.none() | st.integers(0, 2**64 - 1),
            st.binary(max_size=32),
        ),
    )


@SQLITE_ONLY
def test_fuzzed_safetensors_never_crash(registry: LiveRegistry, tiny_lora: Path) -> None:
    """Property: malformed weights get a 4xx naming the file, never a 5xx, never a version."""
    config = lora_files(tiny_lora)[CONFIG]
    statuses: dict[int, int] = {}

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(weights=_weights_payloads())
    def check(weights: bytes) -> None:
        response = commit(registry, {CONFIG: config, WEIGHTS: weights})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert 400 <= response.status_code < 500, (weights[:80], response.text)
        body = response.json()
        assert set(body) == {"error", "detail"}
        assert WEIGHTS in body["detail"], body

    check()

    assert sum(statuses.values()) >= 40
    assert row_counts(registry.engine)["AdapterVersion"] == 0


# Adapters that do not fit their base model, and foreign configs


def test_lora_shape_mismatch_rejected(
    registry: LiveRegistry, tiny_lora: Path, tmp_path: Path
) -> None:
    tensors = load_file(tiny_lora / WEIGHTS)
    name = next(key for key in sorted(tensors) if "lora_A" in key)
    rank, width = tensors[name].shape
    tensors[name] = tensors[name].new_zeros((rank, width + 3))
    save_file(tensors, tmp_path / WEIGHTS)

    response = commit(
        registry, {**lora_files(tiny_lora), WEIGHTS: (tmp_path / WEIGHTS).read_bytes()}
    )

    assert_rejected(response, 422, "InvalidAdapter", str(width), str(width + 3))
    module = name.split(".lora_A")[0].removeprefix("base_model.model.")
    assert module in response.json()["detail"]
    assert row_counts(registry.engine)["AdapterVersion"] == 0


def test_unknown_target_module_rejected(registry: LiveRegistry, tiny_lora: Path) -> None:
    response = commit(registry, with_config(tiny_lora, target_modules=["gate_proj", "warp_drive"]))

    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"] == "InvalidAdapter"
    assert row_counts(registry.engine)["AdapterVersion"] == 0


def test_unknown_peft_type_rejected(registry: LiveRegistry, tiny_lora: Path) -> None:
    response = commit(registry, with_config(tiny_lora, peft_type="HYPERLORA"))

    assert_rejected(response, 422, "InvalidAdapter", "HYPERLORA")
    assert row_counts(registry.engine)["AdapterVersion"] == 0


def test_newer_peft_config_rejected(registry: LiveRegistry, tiny_lora: Path) -> None:
    response = commit(registry, with_config(tiny_lora, lora_quantum_entanglement=True))

    assert_rejected(response, 422, "InvalidAdapter", "lora_quantum_entanglement")
    assert row_counts(registry.engine)["AdapterVersion"] == 0


def test_config_not_json_rejected(registry: LiveRegistry, tiny_lora: Path) -> None:
    response = commit(registry, {**lora_files(tiny_lora), CONFIG: b"{not json"})

    assert_rejected(response, 422, "InvalidAdapter", CONFIG)
    assert row_counts(registry.engine)["AdapterVersion"] == 0


# Digests and sizes


def assert_not_stored(registry: LiveRegistry, digest: str) -> None:
    assert not registry.store.has_blob(digest)
    assert list(registry.store.iter_staged_uploads()) == []
    with registry.engine.connect() as connection:
        assert connection.scalar(select(Blob.digest).where(Blob.digest == digest)) is None


def test_digest_mismatch_rejected(registry: LiveRegistry) -> None:
    claimed = digest_of(b"the bytes the client claims")

    response = httpx.put(api(registry, f"/blobs/{claimed}"), content=b"other bytes")

    assert_rejected(response, 422, "DigestMismatch", claimed, digest_of(b"other bytes"))
    assert_not_stored(registry, claimed)
    assert not registry.store.has_blob(digest_of(b"other bytes"))


def test_resumable_upload_digest_mismatch(registry: LiveRegistry) -> None:
    data = os.urandom(1000)
    claimed = digest_of(b"x" + data[1:])
    upload = httpx.post(api(registry, "/uploads"), json={"digest": claimed, "size": 1000}).json()
    part = httpx.put(api(registry, f"/uploads/{upload['upload_id']}/parts/1"), content=data)
    assert part.status_code == 200, part.text

    response = httpx.post(api(registry, f"/uploads/{upload['upload_id']}/complete"))

    assert_rejected(response, 422, "DigestMismatch", claimed)
    assert not registry.store.has_blob(claimed)
    with registry.engine.connect() as connection:
        assert connection.scalar(select(Blob.digest).where(Blob.digest == claimed)) is None


def test_malformed_digest_rejected(registry: LiveRegistry) -> None:
    response = httpx.put(api(registry, "/blobs/sha256:..%2F..%2Fetc"), content=b"x")

    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"] in ("InvalidInput", "NotFound")


def test_declared_size_over_limit_rejected(registry: LiveRegistry) -> None:
    digest = digest_of(b"big")
    response = httpx.post(
        api(registry, "/uploads"), json={"digest": digest, "size": MAX_BLOB_BYTES + 1}
    )

    assert_rejected(response, 413, "PayloadTooLarge", str(MAX_BLOB_BYTES + 1), str(MAX_BLOB_BYTES))
    with registry.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Blob)) == 0


def read_http_response(sock: socket.socket) -> tuple[int, bytes]:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def test_chunked_upload_over_limit_stopped_while_streaming(registry: LiveRegistry) -> None:
    """A body without Content-Length is rejected once it passes the limit, before it ends."""
    data = os.urandom(MAX_BLOB_BYTES + 8 * BATCH_BYTES)
    digest = digest_of(data)
    # The server hands the body to the store in batches of BATCH_BYTES: past the limit
    # plus two batches it has seen too much, so the client stops sending and waits.
    stop_at = MAX_BLOB_BYTES + 2 * BATCH_BYTES
    host, port = registry.url.removeprefix("http://").split(":")
    chunk = 256 * 1024
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"PUT /api/v1/blobs/{digest} HTTP/1.1\r\nHost: {host}\r\n"
            "Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        )
        try:
            while sent < stop_at:
                piece = data[sent : sent + chunk]
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server responded early and closed the connection
        status, body = read_http_response(sock)

    assert sent < len(data)
    assert status == 413, body
    assert b"PayloadTooLarge" in body
    assert str(MAX_BLOB_BYTES).encode() in body
    assert_not_stored(registry, digest)
