"""Integrity check: flipped bytes and lost objects are found and traced to their versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry import errors
from registry.services.actors import LOCAL_ADMIN
from registry.services.fsck import check_integrity
from registry.storage import LocalBlobStore, S3BlobStore
from registry.storage.base import BlobStore
from tests.reliability.conftest import flip_byte, object_path_or_key, read_object, write_object
from tests.reliability.test_gc import digest_of
from tests.support.fixtures import LiveRegistry

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def pushed(live_registry: LiveRegistry, tiny_base: Path, tiny_lora: Path) -> dict[str, Any]:
    live_registry.client.register_base_model("tiny", tiny_base)
    return live_registry.client.push("chat", tiny_lora, base_model="tiny")


def weights_digest(pushed: dict[str, Any]) -> str:
    return next(entry["digest"] for entry in pushed["files"] if entry["path"] == WEIGHTS)


def run_fsck(registry: LiveRegistry) -> dict[str, Any]:
    return check_integrity(registry.app.state.registry.unit_of_work, registry.store, LOCAL_ADMIN)


def test_fsck_passes_on_intact_store(live_registry: LiveRegistry, pushed: dict[str, Any]) -> None:
    report = run_fsck(live_registry)

    assert report["ok"] is True
    assert report["checked"] == len(pushed["files"])
    assert report["bytes_read"] == sum(entry["size"] for entry in pushed["files"])
    assert report["problems"] == []


def test_fsck_finds_flipped_byte(live_registry: LiveRegistry, pushed: dict[str, Any]) -> None:
    digest = weights_digest(pushed)
    flip_byte(live_registry.store, digest)

    report = run_fsck(live_registry)

    assert report["ok"] is False
    assert [problem["digest"] for problem in report["problems"]] == [digest]
    problem = report["problems"][0]
    assert problem["problem"] == "damaged"
    assert problem["found_digest"] != digest
    assert problem["referenced_by"] == [
        {"kind": "adapter_version", "name": "chat@1", "path": WEIGHTS}
    ]


def test_fsck_finds_missing_object(live_registry: LiveRegistry, pushed: dict[str, Any]) -> None:
    digest = weights_digest(pushed)
    live_registry.store.delete_blob(digest)

    report = run_fsck(live_registry)

    assert [problem["problem"] for problem in report["problems"]] == ["missing"]
    assert report["problems"][0]["digest"] == digest
    assert report["problems"][0]["referenced_by"][0]["name"] == "chat@1"


def test_fsck_names_base_model_and_dataset_users(
    live_registry: LiveRegistry, tiny_base: Path, tmp_path: Path
) -> None:
    base = live_registry.client.register_base_model("uploaded", tiny_base, upload=True)
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "a"}\n')
    dataset = live_registry.client.register_dataset("rows", data, upload=True)
    config = next(entry for entry in base["files"] if entry["path"] == "config.json")
    flip_byte(live_registry.store, config["digest"])
    live_registry.store.delete_blob(dataset["digest"])

    problems = {problem["digest"]: problem for problem in run_fsck(live_registry)["problems"]}

    assert problems[config["digest"]]["problem"] == "damaged"
    assert problems[config["digest"]]["referenced_by"] == [
        {"kind": "base_model", "name": "uploaded", "path": "config.json"}
    ]
    assert problems[dataset["digest"]]["problem"] == "missing"
    assert problems[dataset["digest"]]["referenced_by"] == [
        {"kind": "dataset", "name": "rows@1", "path": ""}
    ]


def server_environment(registry: LiveRegistry, request: pytest.FixtureRequest) -> dict[str, str]:
    """The variables `adapterreg gc` and `fsck` need to open this registry's database and store."""
    env = {
        **os.environ,
        "ADAPTERREG_DATABASE_URL": str(registry.settings.database_url),
        "ADAPTERREG_STORAGE_URL": storage_url(registry.store),
        "HF_HUB_OFFLINE": "1",
    }
    if isinstance(registry.store, S3BlobStore):
        env["AWS_ENDPOINT_URL"] = request.getfixturevalue("s3_server")
    return env


def storage_url(store: BlobStore) -> str:
    if isinstance(store, LocalBlobStore):
        return store.root.resolve().as_uri()
    assert isinstance(store, S3BlobStore)
    return f"s3://{store.bucket}/{store.prefix}"


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_fsck_and_gc(
    live_registry: LiveRegistry, pushed: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    env = server_environment(live_registry, request)
    digest = weights_digest(pushed)
    flip_byte(live_registry.store, digest)
    orphan_data = os.urandom(300)
    orphan = digest_of(orphan_data)
    httpx.put(f"{live_registry.url}/api/v1/blobs/{orphan}", content=orphan_data).raise_for_status()

    fsck = run_cli(env, "fsck", "--json")
    gc = run_cli(env, "gc", "--grace-seconds", "0", "--json")

    assert fsck.returncode == 6, fsck.stderr
    problems = json.loads(fsck.stdout)["problems"]
    assert [(p["digest"], p["problem"]) for p in problems] == [(digest, "damaged")]
    assert gc.returncode == 0, gc.stderr
    assert [blob["digest"] for blob in json.loads(gc.stdout)["deleted_blobs"]] == [orphan]
    assert not live_registry.store.has_blob(orphan)
    # fsck moved the damaged object aside, and gc keeps the quarantined copy.
    assert not live_registry.store.has_blob(digest)
    assert quarantined_exists(live_registry.store, problems[0]["quarantined_to"])


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cli_fsck_prints_problem_and_hint(
    live_registry: LiveRegistry, pushed: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    env = server_environment(live_registry, request)
    digest = weights_digest(pushed)
    Path(object_path_or_key(live_registry.store, digest)).unlink()

    result = run_cli(env, "fsck")

    assert result.returncode == 6
    assert "missing" in result.stdout
    assert "chat@1" in result.stdout
    assert "push the versions that reference them again" in result.stderr


def quarantined_exists(store: BlobStore, location: str) -> bool:
    """Return whether the quarantined object fsck reported at ``location`` exists."""
    if isinstance(store, LocalBlobStore):
        return Path(location).is_file()
    assert isinstance(store, S3BlobStore)
    key = location.removeprefix(f"s3://{store.bucket}/")
    listing = store.client.list_objects_v2(Bucket=store.bucket, Prefix=key)
    return [item["Key"] for item in listing.get("Contents", [])] == [key]


def test_fsck_moves_damaged_object_aside(
    live_registry: LiveRegistry, pushed: dict[str, Any]
) -> None:
    digest = weights_digest(pushed)
    flip_byte(live_registry.store, digest)

    problem = run_fsck(live_registry)["problems"][0]

    assert problem["problem"] == "damaged"
    assert "quarantine/sha256/" in problem["quarantined_to"]
    assert quarantined_exists(live_registry.store, problem["quarantined_to"])
    assert not live_registry.store.has_blob(digest)
    assert live_registry.client.missing_blobs([digest]) == [digest]


@pytest.mark.parametrize("push_as", ["chat", "chat-copy"])
def test_push_again_repairs_damaged_blob(
    live_registry: LiveRegistry,
    pushed: dict[str, Any],
    tiny_lora: Path,
    tmp_path: Path,
    push_as: str,
) -> None:
    digest = weights_digest(pushed)
    flip_byte(live_registry.store, digest)
    assert run_fsck(live_registry)["ok"] is False

    again = live_registry.client.push(push_as, tiny_lora, base_model="tiny")
    live_registry.client.pull("chat@1", tmp_path / "pulled")

    assert weights_digest(again) == digest
    assert (tmp_path / "pulled" / WEIGHTS).read_bytes() == (tiny_lora / WEIGHTS).read_bytes()
    report = run_fsck(live_registry)
    assert report["ok"] is True, report["problems"]


def test_missing_blobs_lists_recorded_digest_without_object(
    live_registry: LiveRegistry, pushed: dict[str, Any]
) -> None:
    digest = weights_digest(pushed)
    others = [entry["digest"] for entry in pushed["files"] if entry["digest"] != digest]
    live_registry.store.delete_blob(digest)

    assert live_registry.client.missing_blobs([digest, *others]) == [digest]


def test_commit_reading_damaged_blob_raises_integrity_error(
    live_registry: LiveRegistry, pushed: dict[str, Any], tiny_lora: Path
) -> None:
    digest = weights_digest(pushed)
    # Byte 10 lies in the safetensors JSON header, which the commit parses.
    data = bytearray(read_object(live_registry.store, digest))
    data[10] ^= 0xFF
    write_object(live_registry.store, digest, bytes(data))

    with pytest.raises(errors.IntegrityError) as caught:
        live_registry.client.push("chat-copy", tiny_lora, base_model="tiny")

    assert WEIGHTS in caught.value.detail
    assert digest in caught.value.detail
    assert "adapterreg fsck" in caught.value.detail


def test_pull_of_flipped_blob_fails_naming_file(
    live_registry: LiveRegistry, pushed: dict[str, Any], tmp_path: Path
) -> None:
    digest = weights_digest(pushed)
    flip_byte(live_registry.store, digest)
    destination = tmp_path / "pulled"

    with pytest.raises(errors.IntegrityError) as caught:
        live_registry.client.pull("chat@1", destination)

    assert WEIGHTS in caught.value.detail
    assert digest in caught.value.detail
    assert "adapterreg fsck" in caught.value.detail
    assert not destination.exists()
