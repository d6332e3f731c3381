"""The `adapterreg` command as a user runs it: a real process against a live API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fixtures import LiveRegistry
from tests.support.models import save_lora_adapter, save_tiny_llama


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    base = save_tiny_llama(root / "base")
    return {"base": base, "adapter": save_lora_adapter(base, root / "adapter", seed=1)}


def run_cli(
    registry: LiveRegistry, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ADAPTERREG_URL": registry.url, "HF_HUB_OFFLINE": "1"}
    env.pop("ADAPTERREG_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"adapterreg {' '.join(args)} failed: {result.stderr}")
    return result


def run_json(registry: LiveRegistry, *args: str) -> dict:  # type: ignore[type-arg]
    output = run_cli(registry, *args, "--json").stdout
    document: dict = json.loads(output)  # type: ignore[type-arg]
    return document


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cli_register_push_show_pull(
    live_registry: LiveRegistry, material: dict[str, Path], tmp_path: Path
) -> None:
    base = run_json(
        live_registry,
        "base-model",
        "register",
        "tiny",
        "--path",
        str(material["base"]),
        "--revision",
        "r1",
    )
    assert base["architecture"] == "LlamaForCausalLM"
    pushed = run_json(
        live_registry,
        "push",
        "chat",
        str(material["adapter"]),
        "--base-model",
        "tiny",
        "--tag",
        "team=search",
    )
    assert pushed["name"] == "chat"
    assert pushed["version"] == 1
    assert pushed["digest"].startswith("sha256:")
    shown = run_json(live_registry, "show", "chat@1")
    assert shown["tags"] == {"team": "search"}
    listed = run_json(live_registry, "list")
    assert [a["name"] for a in listed["items"]] == ["chat"]
    versions = run_json(live_registry, "versions", "chat")
    assert [v["version"] for v in versions["items"]] == [1]
    lineage = run_json(live_registry, "lineage", "chat@1")
    assert lineage["base_model"]["revision"] == "r1"
    pulled = run_json(live_registry, "pull", "chat@1", str(tmp_path / "out"))
    assert pulled["version"] == 1
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cli_not_found_exit_code_and_json_error(live_registry: LiveRegistry) -> None:
    result = run_cli(live_registry, "show", "missing@1", "--json", check=False)
    assert result.returncode == 3
    assert json.loads(result.stdout)["error"] == "NotFound"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cli_human_error_names_value(live_registry: LiveRegistry) -> None:
    result = run_cli(live_registry, "show", "bad name!", check=False)
    assert result.returncode == 2
    assert "'bad name!'" in result.stderr


def test_cli_unreachable_registry_says_how_to_start() -> None:
    env = {**os.environ, "ADAPTERREG_URL": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 7
    assert "adapterreg serve" in result.stderr
