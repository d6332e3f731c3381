"""Tokens and roles on a server that is not open."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
from sqlalchemy.engine import Engine

from registry import errors
from registry.api.app import create_app
from registry.client import RegistryClient
from registry.config import Settings
from registry.db.session import create_session_factory, session_scope
from registry.server import decide_open_access
from registry.services import tokens
from registry.services.actors import LOCAL_ADMIN
from registry.storage.base import BlobStore
from tests.support.servers import run_app


@pytest.fixture
def secured(
    engine: Engine, store: BlobStore, registry_settings: Settings
) -> Iterator[tuple[str, dict[str, str]]]:
    with session_scope(create_session_factory(engine)) as session:
        issued = {
            role: tokens.create_token(session, LOCAL_ADMIN, name=f"u-{role}", role=role)["token"]
            for role in ("reader", "writer", "admin")
        }
    app = create_app(registry_settings, engine=engine, store=store, open_access=False)
    with run_app(app) as server:
        yield server.url, issued


def test_request_without_token_is_401(secured: tuple[str, dict[str, str]]) -> None:
    url, _ = secured
    response = httpx.get(f"{url}/api/v1/adapters")
    assert response.status_code == 401
    assert response.json()["error"] == "Unauthorized"


def test_reader_cannot_register(secured: tuple[str, dict[str, str]]) -> None:
    url, issued = secured
    with RegistryClient(url, issued["reader"]) as client, pytest.raises(errors.Forbidden) as caught:
        client.create_token("mallory", "admin")
    assert "'reader'" in caught.value.detail


def test_reader_can_list(secured: tuple[str, dict[str, str]]) -> None:
    url, issued = secured
    with RegistryClient(url, issued["reader"]) as client:
        assert client.list_adapters()["items"] == []


def test_invalid_token_is_401(secured: tuple[str, dict[str, str]]) -> None:
    url, _ = secured
    with RegistryClient(url, "arg_not-a-token") as client, pytest.raises(errors.Unauthorized):
        client.list_adapters()


def test_tokens_are_stored_hashed(engine: Engine, secured: tuple[str, dict[str, str]]) -> None:
    _, issued = secured
    with engine.connect() as connection:
        stored = [row[0] for row in connection.exec_driver_sql("SELECT token_hash FROM api_tokens")]
    assert issued["admin"] not in stored
    assert tokens.hash_token(issued["admin"]) in stored


def test_non_loopback_without_tokens_refuses(engine: Engine, registry_settings: Settings) -> None:
    settings = replace(registry_settings, host="0.0.0.0")
    with pytest.raises(errors.InvalidInput) as caught:
        decide_open_access(settings, engine)
    assert "token create" in caught.value.detail


def test_open_auth_on_public_address_refuses(engine: Engine, registry_settings: Settings) -> None:
    settings = replace(registry_settings, host="0.0.0.0", auth="open")
    with pytest.raises(errors.InvalidInput):
        decide_open_access(settings, engine)


def test_loopback_is_open_by_default(engine: Engine, registry_settings: Settings) -> None:
    assert decide_open_access(registry_settings, engine) is True


def test_token_name_reuse_advice(engine: Engine) -> None:
    with session_scope(create_session_factory(engine)) as session:
        tokens.create_token(session, LOCAL_ADMIN, name="ci", role="writer")
        with pytest.raises(errors.Conflict) as active:
            tokens.create_token(session, LOCAL_ADMIN, name="ci", role="writer")
        tokens.revoke_token(session, LOCAL_ADMIN, name="ci")
        with pytest.raises(errors.Conflict) as revoked:
            tokens.create_token(session, LOCAL_ADMIN, name="ci", role="writer")

    assert "pick another name" in active.value.detail
    assert "revoked at" in revoked.value.detail
    assert "pick a new name" in revoked.value.detail
    assert "revoke it" not in revoked.value.detail


@pytest.mark.parametrize("params", [{"limit": -1}, {"limit": 0}, {"after_id": -5}])
def test_audit_rejects_invalid_paging(
    engine: Engine, store: BlobStore, registry_settings: Settings, params: dict[str, int]
) -> None:
    app = create_app(registry_settings, engine=engine, store=store, open_access=True)
    with run_app(app) as server:
        response = httpx.get(f"{server.url}/api/v1/audit", params=params)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "InvalidInput"
    assert str(next(iter(params.values()))) in response.json()["detail"]
