"""Version numbers under concurrent pushes, assigned by the database."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.fixtures import LiveRegistry
from tests.support.models import save_lora_adapter, save_tiny_llama

PUSHES = 32


@pytest.fixture(scope="module")
def many_adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("concurrency")
    base = save_tiny_llama(root / "base")
    first = save_lora_adapter(base, root / "lora-0", seed=0)
    adapters = [first]
    # Distinct content with one save: copy the config and write new random weights.
    from safetensors.torch import load_file, save_file

    tensors = load_file(first / "adapter_model.safetensors")
    for index in range(1, PUSHES):
        directory = root / f"lora-{index}"
        directory.mkdir()
        (directory / "adapter_config.json").write_bytes(
            (first / "adapter_config.json").read_bytes()
        )
        save_file(
            {k: v + index for k, v in tensors.items()}, directory / "adapter_model.safetensors"
        )
        adapters.append(directory)
    return base, adapters


@pytest.mark.parametrize("backend", ["postgres", "sqlite"], indirect=True)
def test_concurrent_pushes_get_consecutive_versions(
    live_registry: LiveRegistry, many_adapters: tuple[Path, list[Path]]
) -> None:
    base, adapters = many_adapters
    live_registry.client.register_base_model("tiny", base)

    def push(directory: Path) -> int:
        with live_registry.client_for(None) as client:
            return int(client.push("busy", directory, base_model="tiny")["version"])

    with ThreadPoolExecutor(max_workers=PUSHES) as pool:
        versions = list(pool.map(push, adapters))
    assert sorted(versions) == list(range(1, PUSHES + 1))
    listed = live_registry.client.list_versions("busy", limit=100)["items"]
    assert len(listed) == PUSHES
