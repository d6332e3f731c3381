"""Push, pull, dedupe and validation over real HTTP, on SQLite+files and PostgreSQL+S3."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from registry import errors
from registry.client import RegistryClient
from registry.db.models import Adapter, AdapterVersion, AuditEvent
from tests.support.fixtures import LiveRegistry
from tests.support.models import save_lora_adapter, save_tiny_llama
from tests.support.servers import free_port


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def lora_a(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lora_adapter(tiny_base, tmp_path_factory.mktemp("lora-a"), seed=1)


@pytest.fixture(scope="session")
def lora_b(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_lora_adapter(tiny_base, tmp_path_factory.mktemp("lora-b"), seed=2)


@pytest.fixture
def registry(live_registry: LiveRegistry, tiny_base: Path) -> LiveRegistry:
    live_registry.client.register_base_model("tiny-llama", tiny_base, revision="r1")
    return live_registry


def test_push_returns_version_one(registry: LiveRegistry, lora_a: Path) -> None:
    result = registry.client.push("chat", lora_a, base_model="tiny-llama")
    assert result["version"] == 1
    assert result["created"] is True
    assert result["method"] == "lora"
    assert result["digest"].startswith("sha256:")


def test_push_identical_content_returns_existing(registry: LiveRegistry, lora_a: Path) -> None:
    first = registry.client.push("chat", lora_a, base_model="tiny-llama")
    again = registry.client.push("chat", lora_a, base_model="tiny-llama")
    assert again["version"] == first["version"]
    assert again["created"] is False


def test_push_new_content_increments_version(
    registry: LiveRegistry, lora_a: Path, lora_b: Path
) -> None:
    registry.client.push("chat", lora_a, base_model="tiny-llama")
    second = registry.client.push("chat", lora_b, base_model="tiny-llama")
    assert second["version"] == 2


def test_pull_loads_with_stock_peft(
    registry: LiveRegistry, lora_a: Path, tiny_base: Path, tmp_path: Path
) -> None:
    registry.client.push("chat", lora_a, base_model="tiny-llama")
    dest = tmp_path / "pulled"
    registry.client.pull("chat@1", dest)
    assert (dest / "adapter_model.safetensors").read_bytes() == (
        lora_a / "adapter_model.safetensors"
    ).read_bytes()
    # A fresh interpreter that cannot import adapterreg loads the directory with stock peft.
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('registry', 'cli', 'trainer'):
            raise ImportError('adapterreg must not be needed: ' + name)
sys.meta_path.insert(0, Block())
import torch
from peft import PeftModel
from transformers import LlamaForCausalLM
base = LlamaForCausalLM.from_pretrained({str(tiny_base)!r})
model = PeftModel.from_pretrained(base, {str(dest)!r})
print(sum(p.numel() for n, p in model.named_parameters() if 'lora_' in n))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert int(out.stdout.strip()) > 0


def test_pull_rejects_corrupted_blob(registry: LiveRegistry, lora_a: Path, tmp_path: Path) -> None:
    pushed = registry.client.push("chat", lora_a, base_model="tiny-llama")
    weights = next(f for f in pushed["files"] if f["path"] == "adapter_model.safetensors")
    corrupt_blob(registry, weights["digest"])
    with pytest.raises(errors.IntegrityError) as caught:
        registry.client.pull("chat@1", tmp_path / "pulled")
    assert "adapter_model.safetensors" in caught.value.detail
    assert weights["digest"] in caught.value.detail
    assert not (tmp_path / "pulled" / "adapter_model.safetensors").exists()


def corrupt_blob(registry: LiveRegistry, digest: str) -> None:
    """Flip one byte of a stored blob in place, behind the registry's back."""
    from registry.storage.base import blob_key

    store = registry.store
    if registry.backend == "sqlite":
        path = store.root / blob_key(digest)  # type: ignore[attr-defined]
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        return
    key = f"{store.prefix.rstrip('/')}/{blob_key(digest)}"  # type: ignore[attr-defined]
    body = bytearray(store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read())  # type: ignore[attr-defined]
    body[-1] ^= 0xFF
    store.client.put_object(Bucket=store.bucket, Key=key, Body=bytes(body))  # type: ignore[attr-defined]


def test_push_rejects_adapter_for_other_shapes(registry: LiveRegistry, tmp_path: Path) -> None:
    other_base = save_tiny_llama(tmp_path / "wide", hidden_size=48, intermediate_size=96)
    wrong = save_lora_adapter(other_base, tmp_path / "wrong", seed=3)
    with pytest.raises(errors.InvalidAdapter) as caught:
        registry.client.push("chat", wrong, base_model="tiny-llama")
    assert "q_proj" in caught.value.detail
    assert "32" in caught.value.detail
    assert "48" in caught.value.detail
    with registry.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(Adapter)) == 0
        assert connection.scalar(select(func.count()).select_from(AdapterVersion)) == 0


def test_push_rejects_unknown_base_model(registry: LiveRegistry, lora_a: Path) -> None:
    with pytest.raises(errors.NotFound) as caught:
        registry.client.push("chat", lora_a, base_model="no-such-model")
    assert "'no-such-model'" in caught.value.detail


def test_push_rejects_pickle_weights(registry: LiveRegistry, lora_a: Path, tmp_path: Path) -> None:
    import pickle
    import shutil

    bad = tmp_path / "pickled"
    shutil.copytree(lora_a, bad)
    (bad / "adapter_model.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(errors.InvalidAdapter) as caught:
        registry.client.push("chat", bad, base_model="tiny-llama")
    assert "pickle" in caught.value.detail


def test_push_writes_audit_events(registry: LiveRegistry, lora_a: Path) -> None:
    registry.client.push("chat", lora_a, base_model="tiny-llama")
    with registry.engine.connect() as connection:
        actions = set(connection.scalars(select(AuditEvent.action)))
    assert "base_model.registered" in actions
    assert "adapter.created" in actions
    assert "version.created" in actions


def test_resolve_returns_serving_contract(registry: LiveRegistry, lora_a: Path) -> None:
    pushed = registry.client.push("chat", lora_a, base_model="tiny-llama")
    resolved = registry.client.resolve("chat@1")
    assert resolved["version"] == 1
    assert resolved["digest"] == pushed["digest"]
    assert resolved["base_model"]["name"] == "tiny-llama"
    assert resolved["base_model"]["revision"] == "r1"
    assert resolved["base_model"]["fingerprint"].startswith("sha256:")
    assert {f["path"] for f in resolved["files"]} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
    }
    expect_presigned = registry.backend == "postgres"
    assert all(f["presigned"] is expect_presigned for f in resolved["files"])


def test_idempotency_key_replays_response(registry: LiveRegistry, lora_a: Path) -> None:
    first = registry.client.push("chat", lora_a, base_model="tiny-llama", idempotency_key="k1")
    replay = registry.client.push("chat", lora_a, base_model="tiny-llama", idempotency_key="k1")
    assert replay == first


def test_idempotency_key_reused_for_other_request(
    registry: LiveRegistry, lora_a: Path, lora_b: Path
) -> None:
    registry.client.push("chat", lora_a, base_model="tiny-llama", idempotency_key="k2")
    with pytest.raises(errors.Conflict):
        registry.client.push("chat", lora_b, base_model="tiny-llama", idempotency_key="k2")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/v1/blobs/sha256:" + "0" * 64, errors.ServiceUnavailable),
        ("/bucket/key?X-Amz-Signature=secret", errors.StorageError),
    ],
)
def test_download_from_closed_port_names_file_and_host(
    path: str, expected: type[errors.RegistryError], tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    with RegistryClient(url) as client, pytest.raises(expected) as caught:
        client.download_blob(
            url + path,
            tmp_path / "adapter_config.json",
            digest="sha256:" + "0" * 64,
            size=1,
            display_name="adapter_config.json",
        )

    assert type(caught.value) is expected
    assert "'adapter_config.json'" in caught.value.detail
    assert f"127.0.0.1:{port}" in caught.value.detail
    assert "secret" not in caught.value.detail
    assert list(tmp_path.iterdir()) == []
