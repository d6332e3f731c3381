"""The `adapterreg` command as a user runs it: a real process against a live API."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import boto3
import pytest

from cli.output import PIPE_WIDTH
from registry.api.app import create_app
from registry.client import ADAPTER_FILES
from registry.storage import S3BlobStore
from tests.support.databases import POSTGRES_ADMIN_URL
from tests.support.fixtures import LiveRegistry
from tests.support.models import save_lora_adapter, save_tiny_llama
from tests.support.servers import free_port, run_app


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


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cli_show_rejects_bad_references(live_registry: LiveRegistry) -> None:
    huge = run_cli(live_registry, "show", "chat@99999999999999999999999", check=False)
    path = run_cli(live_registry, "show", "a/b", "--json", check=False)

    assert huge.returncode == 2
    assert "versions are numbers from 1 to 2147483647" in huge.stderr
    assert path.returncode == 2
    assert json.loads(path.stdout)["error"] == "InvalidInput"
    assert "'a/b'" in json.loads(path.stdout)["detail"]


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


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_cli_pull_object_store_down(
    live_registry: LiveRegistry, material: dict[str, Path], tmp_path: Path
) -> None:
    live_registry.client.register_base_model("tiny", material["base"])
    live_registry.client.push("chat", material["adapter"], base_model="tiny")
    # A second API over the same database whose S3 endpoint is a closed loopback port:
    # presigning needs no connection, so resolve works and every download is refused.
    closed_port = free_port()
    unreachable_s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{closed_port}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    assert isinstance(live_registry.store, S3BlobStore)
    store = S3BlobStore(unreachable_s3, live_registry.store.bucket, prefix="registry")
    app = create_app(
        live_registry.settings, engine=live_registry.engine, store=store, open_access=True
    )
    dest = tmp_path / "pulled"

    with run_app(app) as server:
        down = replace(live_registry, url=server.url)
        as_json = run_cli(down, "pull", "chat@1", str(dest), "--json", check=False)
        as_text = run_cli(down, "pull", "chat@1", str(dest), check=False)

    document = json.loads(as_json.stdout)
    assert as_json.returncode == 7
    assert document["error"] == "StorageError"
    assert any(f"download of {name!r}" in document["detail"] for name in ADAPTER_FILES)
    assert f"127.0.0.1:{closed_port}" in document["detail"]
    assert "Signature" not in document["detail"]
    assert as_text.returncode == 7
    assert "Traceback" not in as_text.stderr
    assert as_text.stderr.startswith("error: download of ")
    assert not dest.exists()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cli_pull_unwritable_destination(
    live_registry: LiveRegistry, material: dict[str, Path], tmp_path: Path
) -> None:
    live_registry.client.register_base_model("tiny", material["base"])
    live_registry.client.push("chat", material["adapter"], base_model="tiny")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    dest = blocker / "sub" / "out"

    as_json = run_cli(live_registry, "pull", "chat@1", str(dest), "--json", check=False)
    as_text = run_cli(live_registry, "pull", "chat@1", str(dest), check=False)

    document = json.loads(as_json.stdout)
    assert as_json.returncode == 2
    assert document["error"] == "InvalidInput"
    assert str(dest) in document["detail"]
    assert "Not a directory" in document["detail"]
    assert as_text.returncode == 2
    assert "Traceback" not in as_text.stderr


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cli_push_identical_content_reports_ignored_tags(
    live_registry: LiveRegistry, material: dict[str, Path]
) -> None:
    live_registry.client.register_base_model("tiny", material["base"])
    push = ["push", "chat", str(material["adapter"]), "--base-model", "tiny"]
    first = run_json(live_registry, *push, "--tag", "team=search")

    again = run_json(live_registry, *push, "--tag", "team=search", "--tag", "stage=prod")
    text = run_cli(live_registry, *push, "--tag", "stage=prod").stdout

    assert first["tags_ignored"] == {}
    assert again["created"] is False
    assert again["version"] == first["version"]
    assert again["tags"] == {"team": "search"}
    assert again["tags_ignored"] == {"stage": "prod"}
    assert "returned it unchanged" in text
    assert "tags not applied: stage=prod" in text
    assert "keeps its tags (team=search)" in text


@pytest.mark.parametrize(
    "args",
    [
        ["gate", "set", "chat", "--alias", "production", "--min-margin", "nan"],
        ["gate", "set", "chat", "--alias", "production", "--max-regression", "inf"],
        ["merge", "chat@1", "--out", "merged", "--tolerance", "-inf"],
        ["merge", "a@1", "b@1", "--method", "ties", "--adapter", "ab", "--density", "nan"],
        ["promote", "chat@1", "--to", "staging", "--timeout", "nan"],
    ],
)
def test_cli_non_finite_float_rejected(args: list[str]) -> None:
    # Nothing listens on the discard port: the option must fail before any request.
    env = {**os.environ, "ADAPTERREG_URL": "http://127.0.0.1:9"}

    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    assert "is not a finite number" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_merge_weights_non_finite_rejected() -> None:
    env = {**os.environ, "ADAPTERREG_URL": "http://127.0.0.1:9"}
    args = ["merge", "a@1", "b@1", "--method", "linear", "--adapter", "ab", "--weights", "0.5,inf"]

    result = subprocess.run(
        [sys.executable, "-m", "cli.main", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    assert json.loads(result.stdout)["error"] == "InvalidInput"
    assert "'0.5,inf'" in json.loads(result.stdout)["detail"]


def _print_wide_tables(columns: str | None) -> str:
    """Print a files table to a pipe in a fresh interpreter; return what it wrote."""
    env = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    script = (
        "from cli.output import print_table\n"
        "row = {'path': 'adapter_model.safetensors', 'size': 1234567,\n"
        "       'digest': 'sha256:' + 'd' * 64}\n"
        "print_table([row], ['path', 'size', 'digest'])\n"
        "print_table([{'text': 'x' * 500}], ['text'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_table_width_when_output_is_piped() -> None:
    output = _print_wide_tables(None)

    assert "sha256:" + "d" * 64 in output
    assert max(len(line) for line in output.splitlines()) == PIPE_WIDTH


def test_table_width_follows_columns() -> None:
    output = _print_wide_tables("90")

    assert "sha256:" + "d" * 64 not in output
    assert max(len(line) for line in output.splitlines()) == 90


def run_server_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a command that opens ADAPTERREG_DATABASE_URL directly."""
    env = {**os.environ, "ADAPTERREG_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_token_list_without_database(tmp_path: Path) -> None:
    missing = tmp_path / "state" / "registry.db"
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()

    no_file = run_server_cli(f"sqlite:///{missing}", "token", "list")
    no_schema = run_server_cli(
        f"sqlite:///{empty}", "token", "create", "--name", "a", "--role", "admin"
    )

    assert no_file.returncode == 7, no_file.stderr
    assert "adapterreg db upgrade" in no_file.stderr
    assert "Traceback" not in no_file.stderr
    assert not missing.exists()
    assert no_schema.returncode == 7, no_schema.stderr
    assert "adapterreg db upgrade" in no_schema.stderr
    assert "Traceback" not in no_schema.stderr


def test_cli_db_current_on_missing_postgres_database() -> None:
    server = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    name = f"adapterreg_absent_{uuid.uuid4().hex[:8]}"

    result = run_server_cli(f"{server}/{name}", "db", "current")

    assert result.returncode == 7, result.stderr
    assert name in result.stderr
    assert "ADAPTERREG_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_newer_schema_says_upgrade_adapterreg(tmp_path: Path) -> None:
    database = tmp_path / "registry.db"
    url = f"sqlite:///{database}"
    assert run_server_cli(url, "db", "upgrade").returncode == 0
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")

    listed = run_server_cli(url, "token", "list")
    upgraded = run_server_cli(url, "db", "upgrade")

    for result in (listed, upgraded):
        assert result.returncode == 7, result.stderr
        assert "9999_from_the_future" in result.stderr
        assert "upgrade adapterreg" in result.stderr
        assert "run `adapterreg db upgrade`" not in result.stderr
