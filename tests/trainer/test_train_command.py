"""`adapterreg train` against a live registry: push, config files, Ctrl-C, torchrun."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from cli.train import train
from registry.errors import NotFound
from tests.support.fixtures import LiveRegistry
from tests.support.servers import free_port
from trainer.progress import TrainingProgress

# 96 training rows in batches of 8: 12 steps per epoch.
COMMON = [
    "--base-model",
    "tiny-bert",
    "--dataset",
    "small-fortunes@1",
    "--adapter",
    "topics",
    "--batch-size",
    "8",
    "--max-length",
    "32",
    "--lr",
    "0.01",
    "--seed",
    "5",
    "--quiet",
]


@pytest.fixture
def registered(
    live_registry: LiveRegistry, tiny_bert: Path, small_classification: Path
) -> LiveRegistry:
    live_registry.client.register_base_model("tiny-bert", tiny_bert)
    live_registry.client.register_dataset("small-fortunes", small_classification, version="1")
    return live_registry


def _invoke(registry: LiveRegistry, home: Path, *args: str) -> Result:
    env = {"ADAPTERREG_URL": registry.url, "ADAPTERREG_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return CliRunner().invoke(train, list(args), env=env, catch_exceptions=False)


def _single_json(result: Result) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def test_train_command_pushes_with_lineage(registered: LiveRegistry, tmp_path: Path) -> None:
    config_file = tmp_path / "train.yaml"
    config_file.write_text("epochs: 2\nbatch-size: 4\nr: 4\nweight_decay: 0.01\ntag: [team=nlp]\n")

    result = _invoke(
        registered,
        tmp_path,
        *COMMON,
        "--epochs",
        "1",
        "--config",
        str(config_file),
        "--output-dir",
        str(tmp_path / "out"),
        "--tag",
        "stage=test",
        "--json",
    )
    pushed = _single_json(result)
    version = registered.client.get_version("topics@1")
    run = version["run"]

    assert result.exit_code == 0, result.output
    assert pushed["name"] == "topics"
    assert pushed["version"] == 1
    assert pushed["digest"] == version["digest"]
    assert pushed["adapter_dir"] == str(tmp_path / "out" / "adapter")
    assert run["hyperparameters"]["epochs"] == 1
    assert run["hyperparameters"]["batch_size"] == 8
    assert run["hyperparameters"]["r"] == 4
    assert run["hyperparameters"]["weight_decay"] == 0.01
    assert [m["epoch"] for m in run["metrics"]] == [1]
    assert run["seed"] == 5
    assert version["tags"] == {"team": "nlp", "stage": "test"}
    assert [
        d if isinstance(d, str) else f"{d['name']}@{d['version']}" for d in version["datasets"]
    ] == ["small-fortunes@1"]


def test_train_command_run_shown_by_show(registered: LiveRegistry, tmp_path: Path) -> None:
    trained = _invoke(registered, tmp_path, *COMMON, "--max-steps", "3", "--json")
    env = {"ADAPTERREG_URL": registered.url, "ADAPTERREG_HOME": str(tmp_path)}
    shown = CliRunner().invoke(main, ["show", "topics@1", "--json"], env=env)
    text = CliRunner().invoke(main, ["show", "topics@1"], env=env, terminal_width=200)
    run = _single_json(shown)["run"]

    assert trained.exit_code == 0, trained.output
    assert shown.exit_code == 0, shown.output
    assert run["seed"] == 5
    assert run["hyperparameters"]["lr"] == 0.01
    assert run["hyperparameters"]["max_steps"] == 3
    assert run["hyperparameters"]["eval_split"] == "validation"
    assert run["packages"]["torch"]
    assert run["hardware"]["device"] == "cpu"
    assert 0 < run["trainable_params"] < run["total_params"]
    assert 0 < run["extra"]["trainable_fraction"] < 1
    assert run["wall_time_s"] > 0
    assert [m["step"] for m in run["metrics"]] == [3]
    assert "val_accuracy" in run["metrics"][0]
    assert text.exit_code == 0, text.output
    assert "training run" in text.stdout
    assert "train_loss" in text.stdout


def test_train_command_quantize_rejected_before_loading(tmp_path: Path) -> None:
    # Nothing listens on the discard port: the options fail before any request.
    env = {"ADAPTERREG_URL": "http://127.0.0.1:9", "ADAPTERREG_HOME": str(tmp_path)}

    result = CliRunner().invoke(train, [*COMMON, "--quantize", "4bit", "--json"], env=env)
    error = _single_json(result)

    assert result.exit_code == 2
    assert error["error"] == "InvalidInput"
    assert "--quantize 4bit needs" in error["detail"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--method", "ia3", "--r", "4"], "--r does not apply to method 'ia3'"),
        (["--method", "prefix-tuning", "--dropout", "0.1"], "--dropout does not apply"),
        (["--r", "0"], "--r must be a whole number >= 1, got 0"),
        (["--epochs", "0"], "--epochs must be a whole number >= 1, got 0"),
        (["--target-modules", "query,,value"], "--target-modules needs one or more"),
        (["--dataset", "fortunes"], "must have the form NAME@VERSION"),
        (["--adapter", "bad name"], "invalid adapter name (--adapter) 'bad name'"),
        (["--base-model", "a/b"], "invalid base model name (--base-model) 'a/b'"),
        (["--dataset", "bad name@1"], "invalid dataset name 'bad name'"),
        (["--tag", "bad key=1"], "invalid --tag key 'bad key'"),
    ],
)
def test_train_command_bad_option_rejected(
    options: list[str], expected: str, tmp_path: Path
) -> None:
    env = {"ADAPTERREG_URL": "http://127.0.0.1:9", "ADAPTERREG_HOME": str(tmp_path)}

    result = CliRunner().invoke(train, [*COMMON, *options, "--json"], env=env)

    assert result.exit_code == 2, result.output
    assert expected in _single_json(result)["detail"]


@pytest.mark.parametrize(("option", "value"), [("--lr", "nan"), ("--alpha", "inf")])
def test_train_command_non_finite_number_rejected(option: str, value: str, tmp_path: Path) -> None:
    env = {"ADAPTERREG_URL": "http://127.0.0.1:9", "ADAPTERREG_HOME": str(tmp_path)}

    result = CliRunner().invoke(train, [*COMMON, option, value], env=env)

    assert result.exit_code == 2, result.output
    assert f"'{value}' is not a finite number" in result.output


def test_train_command_non_finite_config_value_rejected(tmp_path: Path) -> None:
    config_file = tmp_path / "train.yaml"
    config_file.write_text("weight_decay: .inf\n")
    env = {"ADAPTERREG_URL": "http://127.0.0.1:9", "ADAPTERREG_HOME": str(tmp_path)}

    result = CliRunner().invoke(train, [*COMMON, "--config", str(config_file), "--json"], env=env)

    assert result.exit_code == 2, result.output
    assert "weight_decay must be a finite number, got inf" in _single_json(result)["detail"]


def test_train_command_push_failure_names_saved_adapter(
    registered: LiveRegistry, tmp_path: Path
) -> None:
    admin = registered.client.create_token("admin", "admin")["token"]
    with registered.client_for(admin) as client:
        reader = client.create_token("trainer", "reader")["token"]
        writer = client.create_token("ci", "writer")["token"]
    out = tmp_path / "out"
    env = {
        "ADAPTERREG_URL": registered.url,
        "ADAPTERREG_HOME": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "ADAPTERREG_TOKEN": reader,
    }
    args = [*COMMON, "--max-steps", "1", "--output-dir", str(out), "--tag", "stage=test"]

    # A reader may train but not push, so the push at the end fails.
    failed = CliRunner().invoke(train, [*args, "--json"], env=env, catch_exceptions=False)
    error = _single_json(failed)
    command = shlex.split(error["detail"].split("push it with: ", 1)[1])

    assert failed.exit_code == 5
    assert error["error"] == "Forbidden"
    assert f"the adapter is saved in {out / 'adapter'}" in error["detail"]
    assert command[:4] == ["adapterreg", "push", "topics", str(out / "adapter")]
    assert command[command.index("--run") + 1] == str(out / "run.json")
    assert command[command.index("--tag") + 1] == "stage=test"

    pushed = CliRunner().invoke(
        main, [*command[1:], "--json"], env={**env, "ADAPTERREG_TOKEN": writer}
    )
    with registered.client_for(writer) as client:
        version = client.get_version("topics@1")

    assert pushed.exit_code == 0, pushed.output
    assert version["tags"] == {"stage": "test"}
    assert version["run"]["seed"] == 5
    assert version["run"]["hyperparameters"]["max_steps"] == 1
    assert [m["step"] for m in version["run"]["metrics"]] == [1]


def test_train_command_config_unknown_key(tmp_path: Path) -> None:
    config_file = tmp_path / "train.yaml"
    config_file.write_text("epochs: 1\nlearning_rate: 0.1\n")
    env = {"ADAPTERREG_URL": "http://127.0.0.1:9", "ADAPTERREG_HOME": str(tmp_path)}

    result = CliRunner().invoke(train, [*COMMON, "--config", str(config_file), "--json"], env=env)
    detail = _single_json(result)["detail"]

    assert result.exit_code == 2
    assert "unknown key 'learning_rate'" in detail
    assert "lr" in detail


def test_train_command_text_output(registered: LiveRegistry, tmp_path: Path) -> None:
    result = _invoke(registered, tmp_path, *COMMON, "--max-steps", "2")

    assert result.exit_code == 0, result.output
    assert "pushed topics@1 (sha256:" in result.stdout
    assert "final epoch:" in result.stdout


def test_train_command_interrupt_then_resume(
    registered: LiveRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = _single_json(
        _invoke(
            registered,
            tmp_path,
            *COMMON,
            "--epochs",
            "2",
            "--adapter",
            "straight",
            "--output-dir",
            str(tmp_path / "straight"),
            "--json",
        )
    )
    original_step = TrainingProgress.step
    calls = {"count": 0}

    def step_then_interrupt(self: TrainingProgress, loss: float) -> None:
        original_step(self, loss)
        calls["count"] += 1
        if calls["count"] == 15:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(TrainingProgress, "step", step_then_interrupt)
    options = [*COMMON, "--epochs", "2", "--adapter", "resumed", "--json"]
    interrupted = _invoke(registered, tmp_path, *options, "--output-dir", str(tmp_path / "run"))
    stopped = _single_json(interrupted)
    monkeypatch.setattr(TrainingProgress, "step", original_step)

    assert interrupted.exit_code == 130
    assert stopped["error"] == "Interrupted"
    assert stopped["checkpoint"] == str(tmp_path / "run" / "checkpoint")
    with pytest.raises(NotFound):
        registered.client.list_versions("resumed")

    resumed = _single_json(
        _invoke(
            registered,
            tmp_path,
            *options,
            "--output-dir",
            str(tmp_path / "run"),
            "--resume",
            stopped["checkpoint"],
        )
    )

    assert resumed["version"] == 1
    assert resumed["digest"] == straight["digest"]
    assert resumed["metrics"] == straight["metrics"]


def test_train_command_sigint_to_process_then_resume(
    registered: LiveRegistry, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "ADAPTERREG_URL": registered.url,
        "ADAPTERREG_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
    }
    # Without --quiet: the per-epoch log lines show when training is under way.
    options = [*(o for o in COMMON if o != "--quiet"), "--epochs", "6"]
    options += ["--output-dir", str(tmp_path / "run"), "--json"]
    process = subprocess.Popen(
        [sys.executable, "-m", "trainer", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert process.stderr is not None
    logged = []
    for line in process.stderr:
        logged.append(line)
        if "epoch 1/6, step 12:" in line:
            process.send_signal(signal.SIGINT)
            break
    stdout, stderr = process.communicate(timeout=120)
    stopped = json.loads(stdout)
    state = json.loads((tmp_path / "run" / "checkpoint" / "trainer_state.json").read_text())

    assert process.returncode == 130, "".join(logged) + stderr
    assert stopped["error"] == "Interrupted"
    assert "--resume" in stopped["detail"]
    assert stopped["checkpoint"] == str(tmp_path / "run" / "checkpoint")
    assert 12 <= state["step"] < 72
    assert not (tmp_path / "run" / "adapter").exists()
    with pytest.raises(NotFound):
        registered.client.list_versions("topics")

    resumed = CliRunner().invoke(
        train,
        [*options, "--quiet", "--resume", stopped["checkpoint"]],
        env={"ADAPTERREG_URL": registered.url, "ADAPTERREG_HOME": str(tmp_path / "home")},
        catch_exceptions=False,
    )
    run = registered.client.get_version("topics@1")["run"]

    assert resumed.exit_code == 0, resumed.output
    assert _single_json(resumed)["version"] == 1
    assert [m["epoch"] for m in run["metrics"]] == list(range(1, 7))
    assert run["metrics"][-1]["step"] == 72


def test_train_command_downloads_uploaded_files(
    live_registry: LiveRegistry, tiny_bert: Path, small_classification: Path, tmp_path: Path
) -> None:
    client = live_registry.client
    client.register_base_model(
        "tiny-bert", tiny_bert, source_uri="file:///absent/tiny-bert", upload=True
    )
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(small_classification.read_bytes())
    client.register_dataset("small-fortunes", moved, version="1", upload=True)
    moved.unlink()

    result = _invoke(live_registry, tmp_path / "home", *COMMON, "--max-steps", "1", "--json")

    assert result.exit_code == 0, result.output
    assert _single_json(result)["version"] == 1
    assert (tmp_path / "home" / "cache" / "base-models" / "tiny-bert").is_dir()
    assert (tmp_path / "home" / "cache" / "datasets" / "small-fortunes" / "1.jsonl").is_file()


def test_train_command_unknown_base_model(registered: LiveRegistry, tmp_path: Path) -> None:
    args = [*COMMON, "--json"]
    args[args.index("tiny-bert")] = "absent"

    result = _invoke(registered, tmp_path, *args)

    assert result.exit_code == 3
    assert _single_json(result)["error"] == "NotFound"


def test_train_command_torchrun_two_processes(registered: LiveRegistry, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ADAPTERREG_URL": registered.url,
        "ADAPTERREG_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "trainer",
        *COMMON,
        "--epochs",
        "2",
        "--json",
    ]

    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=240, cwd=Path.cwd()
    )
    pushed = json.loads(completed.stdout)
    versions = registered.client.list_versions("topics")["items"]
    run = registered.client.get_version("topics@1")["run"]

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "epoch 1/" not in completed.stderr
    assert pushed["version"] == 1
    assert len(versions) == 1
    assert run["hardware"]["world_size"] == 2
    # 96 rows over 2 processes with 8 per step: 6 steps per epoch.
    assert [m["step"] for m in run["metrics"]] == [6, 12]
    assert run["metrics"][1]["train_loss"] < run["metrics"][0]["train_loss"]
