"""References (name, name@3, name@alias): parsing, bounds, and their errors over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from registry import errors
from registry.api.app import create_app
from registry.client import RegistryClient
from registry.config import Settings
from registry.services.names import MAX_VERSION, Reference, parse_reference
from registry.storage.base import BlobStore
from tests.support.fixtures import LiveRegistry
from tests.support.servers import run_app

HUGE_VERSION = "99999999999999999999999"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("chat", Reference("chat")),
        ("chat@3", Reference("chat", version=3)),
        ("chat@007", Reference("chat", version=7)),
        (f"chat@{MAX_VERSION}", Reference("chat", version=MAX_VERSION)),
        ("chat@production", Reference("chat", alias="production")),
    ],
)
def test_parse_reference_accepts(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    "text",
    ["@1", "a/b", "..", "?", "#", "chat@", "chat%401", "chat@1@1", "chat\n", "chat@1\n", "chat@²"],
)
def test_parse_reference_rejects_malformed(text: str) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        parse_reference(text)

    assert repr(text) in caught.value.detail
    assert "name@3" in caught.value.detail


@pytest.mark.parametrize("version", ["0", str(MAX_VERSION + 1), HUGE_VERSION])
def test_parse_reference_bounds_version(version: str) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        parse_reference(f"chat@{version}")

    assert f"1 to {MAX_VERSION}" in caught.value.detail


@pytest.mark.parametrize("backend", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/resolve/chat@{HUGE_VERSION}",
        f"/api/v1/adapters/chat/versions/{HUGE_VERSION}",
        f"/api/v1/adapters/chat/versions/{HUGE_VERSION}/lineage",
        "/api/v1/resolve/chat@",
    ],
)
def test_api_rejects_bad_reference_with_422(live_registry: LiveRegistry, path: str) -> None:
    response = httpx.get(live_registry.url + path)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "InvalidInput"
    assert "invalid" in response.json()["detail"]


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("ref", ["@1", "a/b", "..", "?", "#", "chat@", "tiny-topics%401"])
def test_client_validates_reference_before_sending(live_registry: LiveRegistry, ref: str) -> None:
    for call in (live_registry.client.get_version, live_registry.client.lineage):
        with pytest.raises(errors.InvalidInput) as caught:
            call(ref)

        assert f"invalid reference {ref!r}" in caught.value.detail
        assert "name@alias" in caught.value.detail


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_client_maps_http_500_to_internal_error(
    engine: Engine, store: BlobStore, registry_settings: Settings, tmp_path: Path
) -> None:
    app: FastAPI = create_app(registry_settings, engine=engine, store=store, open_access=True)

    def fail() -> None:
        raise RuntimeError("unexpected failure inside a route")

    app.add_api_route("/api/v1/failing-route", fail)
    with (
        run_app(app) as server,
        RegistryClient(server.url, state_dir=tmp_path) as client,
        pytest.raises(errors.InternalError) as caught,
    ):
        client._request("GET", "/failing-route")

    assert "internal server error" in caught.value.detail
    assert not isinstance(caught.value, errors.ServiceUnavailable)
