"""Listings: keyset pagination and filters by base model, method and tag."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import errors
from tests.support.fixtures import LiveRegistry
from tests.support.models import save_lora_adapter, save_tiny_llama


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("listing")
    base = save_tiny_llama(root / "base")
    return base, [save_lora_adapter(base, root / f"a{i}", seed=i) for i in range(3)]


@pytest.fixture
def filled(live_registry: LiveRegistry, adapters: tuple[Path, list[Path]]) -> LiveRegistry:
    base, dirs = adapters
    client = live_registry.client
    client.register_base_model("tiny", base)
    for index, name in enumerate(["alpha", "bravo", "charlie", "delta", "echo"]):
        client.push(name, dirs[index % 3], base_model="tiny", tags={"team": f"t{index % 2}"})
    client.push("alpha", dirs[1], base_model="tiny", tags={"team": "t9"})
    return live_registry


def test_list_adapters_pages_with_cursor(filled: LiveRegistry) -> None:
    first = filled.client.list_adapters(limit=2)
    second = filled.client.list_adapters(limit=2, cursor=first["next_cursor"])
    third = filled.client.list_adapters(limit=2, cursor=second["next_cursor"])
    names = [a["name"] for page in (first, second, third) for a in page["items"]]
    assert names == ["alpha", "bravo", "charlie", "delta", "echo"]
    assert third["next_cursor"] is None


def test_list_adapters_filters_by_tag(filled: LiveRegistry) -> None:
    page = filled.client.list_adapters(tag="team=t9")
    assert [a["name"] for a in page["items"]] == ["alpha"]


def test_list_adapters_filters_by_method_and_base(filled: LiveRegistry) -> None:
    assert len(filled.client.list_adapters(method="lora")["items"]) == 5
    assert filled.client.list_adapters(method="ia3")["items"] == []
    assert filled.client.list_adapters(base_model="other")["items"] == []


def test_list_versions_newest_first(filled: LiveRegistry) -> None:
    page = filled.client.list_versions("alpha", limit=1)
    rest = filled.client.list_versions("alpha", limit=1, cursor=page["next_cursor"])
    assert [v["version"] for v in page["items"]] == [2]
    assert [v["version"] for v in rest["items"]] == [1]
    assert rest["next_cursor"] is None


def test_list_rejects_bad_cursor(filled: LiveRegistry) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        filled.client.list_adapters(cursor="!!!")
    assert "cursor" in caught.value.detail


def test_show_unknown_version_names_latest(filled: LiveRegistry) -> None:
    with pytest.raises(errors.NotFound) as caught:
        filled.client.get_version("alpha@7")
    assert "no version 7 (latest is 2)" in caught.value.detail
