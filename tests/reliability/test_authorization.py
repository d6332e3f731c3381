"""Authorization: 401 without a valid token, 403 below the needed role, protected aliases,
and no secret in the server's logs.

The endpoint list comes from the OpenAPI description, so a new mutating
endpoint is checked without editing this file. Its minimum role is writer
unless ``MIN_ROLE`` lists it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, find, settings
from schemathesis.generation import GenerationMode

from registry import errors
from registry.client import RegistryClient
from tests.reliability.test_concurrency import evaluate_and_submit
from tests.support.fixtures import LiveRegistry

ROLES = ("reader", "writer", "approver", "admin")
MUTATING = ("post", "put", "patch", "delete")
# Minimum role of the mutating endpoints that need something other than writer.
MIN_ROLE = {
    ("post", "/api/v1/tokens"): "admin",
    ("delete", "/api/v1/tokens/{name}"): "admin",
    ("post", "/api/v1/blobs/missing"): "reader",
    ("post", "/api/v1/evaluations/cached"): "reader",
    ("put", "/api/v1/gates/{adapter}/{alias}"): "approver",
    ("post", "/api/v1/promotions/{request_id}/approve"): "approver",
    ("post", "/api/v1/promotions/{request_id}/reject"): "approver",
}
PATH_VALUES = {
    "name": "chat",
    "adapter": "chat",
    "alias": "staging",
    "digest": "sha256:" + "ab" * 32,
    "upload_id": "0" * 32,
    "part_number": "1",
    "request_id": "1",
}


def mutating_operations(registry: LiveRegistry) -> list[tuple[str, str]]:
    spec = registry.app.openapi()
    return [
        (method, path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method in MUTATING
    ]


def schema_valid_body(schema: Any, method: str, path: str) -> Any:
    """Return a JSON body that the endpoint's schema accepts, or None."""
    case = find(
        schema[path][method.upper()].as_strategy(generation_mode=GenerationMode.POSITIVE),
        lambda _case: True,
        settings=settings(
            database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
        ),
    )
    return case.body if isinstance(case.body, dict | list) else None


def send(
    registry: LiveRegistry, method: str, path: str, token: str | None, body: Any
) -> httpx.Response:
    url = registry.url + path.format(**PATH_VALUES)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method in ("put", "post") and "/blobs/" in path and "missing" not in path:
        return httpx.request(method, url, headers=headers, content=b"bytes")
    if "/parts/" in path:
        return httpx.request(method, url, headers=headers, content=b"bytes")
    return httpx.request(method, url, headers=headers, json=body)


def assert_error_shape(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, (response.request.url, response.text)
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == kind
    assert body["detail"]


@pytest.fixture
def tokens(live_registry: LiveRegistry) -> dict[str, str]:
    """One token per role; creating the first one ends open access."""
    admin = live_registry.client.create_token("root", "admin")["token"]
    with live_registry.client_for(admin) as client:
        created = {role: client.create_token(f"{role}-user", role)["token"] for role in ROLES}
    return created


@pytest.fixture
def secrets_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """The server's log lines: the registry's at debug level, its libraries' at info."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="registry")
    # As `adapterreg` configures them: botocore's debug lines carry request signatures.
    for library in ("botocore", "boto3", "s3transfer", "urllib3"):
        caplog.set_level(logging.INFO, logger=library)
    return caplog


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_mutating_endpoints_need_token_and_role(
    live_registry: LiveRegistry, tokens: dict[str, str]
) -> None:
    operations = mutating_operations(live_registry)
    schema = schemathesis.openapi.from_dict(live_registry.app.openapi())
    assert len(operations) >= 20

    for method, path in operations:
        body = schema_valid_body(schema, method, path)
        missing = send(live_registry, method, path, None, body)
        assert_error_shape(missing, 401, "Unauthorized")
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        forged = send(live_registry, method, path, "arg_" + "x" * 43, body)
        assert_error_shape(forged, 401, "Unauthorized")

        needed = MIN_ROLE.get((method, path), "writer")
        if needed == "reader":
            allowed = send(live_registry, method, path, tokens["reader"], body)
            assert allowed.status_code not in (401, 403), (method, path, allowed.text)
            continue
        below = ROLES[ROLES.index(needed) - 1]
        refused = send(live_registry, method, path, tokens[below], body)
        assert_error_shape(refused, 403, "Forbidden")
        assert needed in refused.json()["detail"], (method, path, refused.text)


def test_revoked_token_is_rejected(live_registry: LiveRegistry, tokens: dict[str, str]) -> None:
    with live_registry.client_for(tokens["admin"]) as admin:
        admin._json("DELETE", "/tokens/writer-user")

    response = send(live_registry, "post", "/api/v1/uploads", tokens["writer"], {})

    assert_error_shape(response, 401, "Unauthorized")


@pytest.fixture
def eval_data(tmp_path: Path) -> Path:
    path = tmp_path / "eval.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"row {i}", "split": "test"}) + "\n" for i in range(4))
    )
    return path


def test_protected_alias_moves_only_by_promotion(
    live_registry: LiveRegistry,
    tokens: dict[str, str],
    tiny_base: Path,
    tiny_lora: Path,
    eval_data: Path,
    secrets_log: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    clients = {role: live_registry.client_for(token) for role, token in tokens.items()}
    writer, approver, admin = clients["writer"], clients["approver"], clients["admin"]
    writer.register_base_model("tiny", tiny_base)
    dataset = writer.register_dataset("eval", eval_data, version="1")
    writer.push("chat", tiny_lora, base_model="tiny")

    for client in (writer, approver, admin):
        with pytest.raises(errors.Forbidden) as refused:
            client.set_alias("chat", "production", 1, reason="skip the gate")
        assert "protected" in refused.value.detail
    request = writer.request_promotion("chat@1", "production", datasets=["eval@1"])
    with pytest.raises(errors.Forbidden):
        writer.approve_promotion(request["id"], reason="self-approval")
    assert evaluate_and_submit(writer, dataset)["state"] == "awaiting_approval"
    with pytest.raises(errors.RegistryError):
        writer.approve_promotion(request["id"], reason="self-approval")
    assert approver.approve_promotion(request["id"], reason="reviewed")["state"] == "promoted"
    with pytest.raises(errors.Forbidden):
        writer.rollback("chat", "production", reason="no rights")

    history = approver.alias_history("chat", "production")
    assert [move["promotion_request_id"] for move in history] == [request["id"]]
    pulled = writer.pull("chat@production", tmp_path / "pulled")
    assert pulled["version"] == 1
    assert_no_secrets_logged(secrets_log, tokens, writer.resolve("chat@production"))


def assert_no_secrets_logged(
    caplog: pytest.LogCaptureFixture, tokens: dict[str, str], resolved: dict[str, Any]
) -> None:
    """No token, token hash or download URL query may appear in any captured log line."""
    # werkzeug is the access log of the S3 test server (moto), which receives the URLs,
    # and httpx logs the requests of this process's client (the CLI caps it at WARNING).
    foreign = ("werkzeug", "httpx", "httpcore")
    records = [record for record in caplog.records if not record.name.startswith(foreign)]
    lines = [record.getMessage() for record in records]
    lines += [str(record.args) for record in records if record.args]
    assert len(lines) > 10
    secrets = list(tokens.values())
    secrets += [hashlib.sha256(token.encode()).hexdigest() for token in tokens.values()]
    for entry in resolved["files"]:
        if "?" in entry["url"]:
            secrets.append(entry["url"].split("?", 1)[1])
    secrets += ["X-Amz-Signature", "Signature="]
    for line in lines:
        for secret in secrets:
            assert secret not in line, (secret[:12], line[:200])


def test_reader_cannot_push(
    live_registry: LiveRegistry, tokens: dict[str, str], tiny_base: Path, tiny_lora: Path
) -> None:
    with live_registry.client_for(tokens["writer"]) as writer:
        writer.register_base_model("tiny", tiny_base)
    reader = RegistryClient(live_registry.url, tokens["reader"])

    with pytest.raises(errors.Forbidden) as refused:
        reader.push("chat", tiny_lora, base_model="tiny")

    assert "writer" in refused.value.detail
    with live_registry.client_for(tokens["writer"]) as writer:
        assert writer.list_adapters()["items"] == []
