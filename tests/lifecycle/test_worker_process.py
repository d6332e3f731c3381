"""`adapterreg promote` and `adapterreg worker` against a live API, mostly as separate processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.lifecycle import promote
from tests.support.fixtures import LiveRegistry

EVAL_OPTIONS = ("--max-samples", "6", "--max-length", "32")


def cli_env(registry: LiveRegistry) -> dict[str, str]:
    env = {**os.environ, "ADAPTERREG_URL": registry.url, "HF_HUB_OFFLINE": "1"}
    env.pop("ADAPTERREG_TOKEN", None)
    return env


def run_cli(registry: LiveRegistry, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=cli_env(registry),
        timeout=300,
    )


def invoke_promote(registry: LiveRegistry, *args: str) -> Result:
    """Run `adapterreg promote` in this process: a subprocess would spend seconds importing torch.

    `promote --local` evaluates in the CLI process, so in-process is how it runs anyway.
    """
    return CliRunner().invoke(
        promote,
        [*args, *EVAL_OPTIONS],
        env={"ADAPTERREG_URL": registry.url, "ADAPTERREG_TOKEN": None},
    )


def start_worker(registry: LiveRegistry) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--poll-interval", "0.2", *EVAL_OPTIONS],
        env=cli_env(registry),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop_worker(process: subprocess.Popen[str]) -> str:
    process.terminate()
    output, _ = process.communicate(timeout=60)
    return output


def losses(request: dict[str, Any], subject: str) -> float:
    (evaluation,) = [e for e in request["evaluations"] if e["subject"]["ref"] == subject]
    return float(evaluation["metrics"]["loss"])


# PostgreSQL here and SQLite in the --local test below: each worker process costs seconds.
@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_worker_process_promotes_then_gate_rejects(registry: LiveRegistry) -> None:
    client = registry.client
    client.set_gate("chat", "staging", metric="loss", max_regression=100.0)
    worker = start_worker(registry)
    try:
        first = run_cli(
            registry,
            "promote",
            "chat@1",
            "--to",
            "staging",
            "--dataset",
            "words@1",
            "--wait",
            "--timeout",
            "240",
            "--json",
        )
        assert first.returncode == 0, first.stderr
        client.set_gate("chat", "staging", metric="loss", min_margin=100.0, max_regression=100.0)
        second = run_cli(
            registry,
            "promote",
            "chat@2",
            "--to",
            "staging",
            "--dataset",
            "words@1",
            "--wait",
            "--timeout",
            "240",
            "--json",
        )
    finally:
        output = stop_worker(worker)
    assert "worker interrupted" in output
    # Its start and each decision are logged without -v.
    assert " started" in output
    assert "is now promoted" in output
    promoted = json.loads(first.stdout)
    assert promoted["state"] == "promoted", output
    assert promoted["claimed_by"] is None
    assert client.resolve("chat@staging")["version"] == 1

    assert second.returncode == 4, second.stderr
    rejected = client.get_promotion(json.loads(second.stdout)["id"])
    assert rejected["state"] == "rejected"
    margin = next(c for c in rejected["decision"]["checks"] if c["name"] == "margin")
    assert margin["passed"] is False
    assert margin["candidate"] == pytest.approx(losses(rejected, "chat@2"))
    assert margin["reference"] == pytest.approx(losses(rejected, "chat@1"))
    assert client.resolve("chat@staging")["version"] == 1

    # The base model ran once: the second request reused its cached evaluation.
    base_ids = {
        e["id"]
        for r in (promoted, rejected)
        for e in client.get_promotion(r["id"])["evaluations"]
        if e["subject"]["type"] == "base_model"
    }
    assert len(base_ids) == 1


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_promote_local_and_history_show_evaluations(registry: LiveRegistry) -> None:
    registry.client.set_gate("chat", "staging", metric="loss", max_regression=100.0)
    result = invoke_promote(
        registry, "chat@1", "--to", "staging", "--dataset", "words@1", "--local", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["state"] == "promoted"
    history = run_cli(registry, "history", "chat", "--json")
    (move,) = json.loads(history.stdout)["items"]
    subjects = sorted(e["subject"]["ref"] for e in move["evaluations"])
    assert subjects == ["char-llama", "chat@1"]
    show_result = run_cli(registry, "promotion", "show", str(json.loads(result.stdout)["id"]))
    assert show_result.returncode == 0, show_result.stderr
    assert "regression" in show_result.stdout


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_promote_local_failed_request_exits_nonzero(
    registry: LiveRegistry, words_file: Path, tmp_path: Path
) -> None:
    path = Path(shutil.copy(words_file, tmp_path / "drift.jsonl"))
    registry.client.register_dataset("drift", path, version="1")
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"text": "a row added after registration", "split": "test"}\n')
    result = invoke_promote(
        registry, "chat@1", "--to", "staging", "--dataset", "drift@1", "--local"
    )
    assert result.exit_code == 1, result.output
    assert "failed: IntegrityError" in result.stderr
    assert "drift@1" in result.stderr
    assert registry.client.list_promotions(state="failed")[0]["ref"] == "chat@1"
