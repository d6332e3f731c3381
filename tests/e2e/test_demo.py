"""The demo's lifecycle, shortened to tiny step counts, as a user runs it.

`adapterreg demo` drives the CLI in subprocesses against an API server and a
worker it starts itself, so this covers real HTTP, the worker's claim loop,
training, evaluation, promotion with approval, merge and a stock-peft load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.databases import private_postgres_database

TIMEOUT_S = 900
QUICK = ["--max-steps", "2", "--max-samples", "24", "--max-regression", "1.0"]


@pytest.fixture
def demo_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTERREG_")}
    env["HF_HUB_OFFLINE"] = "1"
    if request.param == "sqlite-local":
        yield env
        return
    endpoint: str = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    with private_postgres_database() as url:
        env.update(
            ADAPTERREG_DATABASE_URL=url,
            ADAPTERREG_STORAGE_URL=f"s3://{bucket}/demo",
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        )
        yield env


def run_demo(root: Path, env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "demo", "--dir", str(root), *QUICK],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary: dict[str, Any] = json.loads((root / "summary.json").read_text())
    return summary


@pytest.mark.timeout(TIMEOUT_S)
@pytest.mark.parametrize("demo_env", ["sqlite-local"], indirect=True)
def test_demo_full_lifecycle(demo_env: dict[str, str], tmp_path: Path) -> None:
    check_lifecycle(run_demo(tmp_path / "demo", demo_env))


@pytest.mark.timeout(2 * TIMEOUT_S)
@pytest.mark.parametrize("demo_env", ["postgres-s3"], indirect=True)
def test_demo_rerun_adds_versions(demo_env: dict[str, str], tmp_path: Path) -> None:
    root = tmp_path / "demo"
    first = run_demo(root, demo_env)
    check_lifecycle(first)
    second = run_demo(root, demo_env)
    assert sorted(row["version"] for row in second["versions"]) == [1, 2, 3, 4, 5, 6]
    # The same base model and dataset records are reused, not registered again.
    assert second["production"]["base_model"] == first["production"]["base_model"]
    assert second["production"]["datasets"] == first["production"]["datasets"]
    assert len(second["history"]) > len(first["history"])


def check_lifecycle(summary: dict[str, Any]) -> None:
    """What one demo run on a fresh registry must have left behind."""
    versions = {row["version"]: row for row in summary["versions"]}
    assert sorted(versions) == [1, 2, 3]
    assert [versions[v]["method"] for v in (1, 2, 3)] == ["lora", "ia3", "lora"]
    for row in versions.values():
        assert 0 < float(row["trainable %"]) < 5

    # The first candidate passes the gate and needs bob's approval; production is set.
    first = summary["promotions"][0]
    assert first["state"] == "promoted", first
    production = summary["production"]
    assert production["ref"].startswith("fortune-topics@")
    assert production["base_model"]["name"] == "minilm"
    assert [d["name"] for d in production["datasets"]] == ["fortunes"]
    assert {p["state"] for p in summary["promotions"]} <= {"promoted", "rejected"}
    rejected = [p for p in summary["promotions"] if p["state"] == "rejected"]
    for promotion in rejected:
        assert any(not check["passed"] for check in promotion["decision"]["checks"])

    # Every alias move is in the history, and the demo rolled one alias back.
    moves = summary["history"]
    assert moves[0]["alias"] == "production"
    assert any("roll" in (move.get("reason") or "") for move in moves), moves

    # The pulled production adapter loads with stock peft and classifies three sentences.
    labels = {"computers", "food", "law", "love", "medicine", "politics", "science", "sports"}
    assert len(summary["classified"]) == 3
    for row in summary["classified"]:
        assert row["label"] in labels
        assert 0 < row["confidence"] <= 1
    assert {step["step"] for step in summary["steps"]} >= {
        "merge production into the base and verify",
        "pull production and classify with stock peft",
    }
