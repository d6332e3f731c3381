"""Push and pull a 256 MiB adapter through the API; compare with raw copies of the same bytes.

Peers, measured in the same run on the same bytes:
- S3: raw boto3 upload_file/download_file against the same loopback moto server
  that the registry stores into.
- local store: a plain file copy (shutil.copyfile).

Prints the best throughput of each with the range over the runs, the ratio
registry/peer of the best runs (goal >= 0.9), the API server's peak RSS growth
during the transfers (goal < 100 MiB) and the load average before and after. The server
runs as its own process (`adapterreg serve`) so its memory is measured alone.

    .venv/bin/python bench/transfer.py [--size-mib 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import numpy as np
import psutil
from moto.server import ThreadedMotoServer
from safetensors.numpy import save_file

from registry.base_manifest import file_digest
from registry.client import RegistryClient

HIDDEN = 1024
RANK = 256
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_adapter(directory: Path, size_mib: int) -> int:
    """Write a LoRA adapter of about size_mib MiB over a synthetic base; return module count."""
    per_module = 2 * RANK * HIDDEN * 4
    modules = max(1, size_mib * MiB // per_module)
    rng = np.random.default_rng(0)
    tensors = {}
    for index in range(modules):
        prefix = f"base_model.model.layers.{index}.proj"
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((RANK, HIDDEN), np.float32)
        tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((HIDDEN, RANK), np.float32)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "r": RANK,
        "lora_alpha": RANK,
        "target_modules": ["proj"],
        "lora_dropout": 0.0,
        "bias": "none",
        "base_model_name_or_path": "bench-base",
        "inference_mode": True,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return modules


def register_synthetic_base(client: RegistryClient, modules: int) -> None:
    """Register a base model by manifest only: the benchmark never needs its weights."""
    config = json.dumps({"architectures": ["BenchModel"], "hidden_size": HIDDEN}).encode()
    manifest = {
        f"layers.{i}.proj.weight": {"shape": [HIDDEN, HIDDEN], "dtype": "F32"}
        for i in range(modules)
    }
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    client._json(
        "POST",
        "/base-models",
        json={
            "name": "bench-base",
            "architecture": "BenchModel",
            "config": {"hidden_size": HIDDEN},
            "manifest": manifest,
            "files": [
                {"path": "config.json", "size": len(config), "digest": digest},
                # Declared, never uploaded: the registry records base weights by digest only.
                {"path": "model.safetensors", "size": 0, "digest": "sha256:" + "0" * 64},
            ],
        },
    )


@contextmanager
def api_server(env: dict[str, str]) -> Iterator[tuple[str, psutil.Process]]:
    port = free_port()
    log_path = Path(env["ADAPTERREG_HOME"]) / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "serve", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    with RegistryClient(url) as probe:
        while True:
            try:
                probe.health()
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server did not start:\n{log_path.read_text()}") from None
                time.sleep(0.2)
    try:
        yield url, psutil.Process(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        if process.returncode not in (0, -15):
            sys.stderr.write(f"server exited with {process.returncode}:\n{log_path.read_text()}")


class PeakRss:
    """Poll a process's resident set size every 10 ms and keep the maximum."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.baseline = process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.baseline


def run_times(
    action: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None
) -> list[float]:
    """Return the seconds of ``repeat`` runs of ``action``; ``setup`` runs untimed before each."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def bench_backend(
    label: str,
    env: dict[str, str],
    adapter: Path,
    modules: int,
    repeat: int,
    peer_push: Callable[[], object],
    peer_pull: Callable[[], object],
    peer_name: str,
    work: Path,
) -> dict[str, float | str]:
    size = (adapter / "adapter_model.safetensors").stat().st_size
    with api_server(env) as (url, process):
        client = RegistryClient(url, state_dir=work / "uploads")
        register_synthetic_base(client, modules)
        rss = PeakRss(process)
        # Emptying the registry before each push makes it transfer every byte again.
        push_times = run_times(
            lambda: client.push("bench", adapter, base_model="bench-base"),
            repeat,
            setup=lambda: forget_blobs(env),
        )
        client.push("bench-final", adapter, base_model="bench-base")
        pull_times = run_times(lambda: client.pull("bench-final", work / f"pulled-{label}"), repeat)
        growth = rss.stop()
        client.close()
    peer_push_times = run_times(peer_push, repeat)
    peer_pull_times = run_times(peer_pull, repeat)
    mib = size / MiB
    result: dict[str, float | str] = {
        "size_mib": mib,
        "rss_growth_mib": growth / MiB,
        "peer": peer_name,
    }
    for op, times, peer_times in (
        ("push", push_times, peer_push_times),
        ("pull", pull_times, peer_pull_times),
    ):
        # Best of each side: the run least disturbed by other load on the machine.
        result[f"{op}_mib_s"] = mib / min(times)
        result[f"peer_{op}_mib_s"] = mib / min(peer_times)
        result[f"{op}_ratio"] = min(peer_times) / min(times)
        # Spread: the slowest and fastest run of each side.
        result[f"{op}_range"] = f"{mib / max(times):.0f}-{mib / min(times):.0f}"
        result[f"peer_{op}_range"] = f"{mib / max(peer_times):.0f}-{mib / min(peer_times):.0f}"
    return result


def forget_blobs(env: dict[str, str]) -> None:
    """Remove blobs and versions so the next push uploads everything again."""
    from sqlalchemy import text

    from registry.db.session import create_db_engine
    from registry.storage import open_blob_store

    engine = create_db_engine(env["ADAPTERREG_DATABASE_URL"])
    store = open_blob_store(env["ADAPTERREG_STORAGE_URL"])
    with engine.begin() as connection:
        digests = [row[0] for row in connection.execute(text("SELECT digest FROM blobs"))]
        for table in (
            "version_files",
            "version_tags",
            "version_datasets",
            "version_parents",
            "alias_history",
            "aliases",
            "adapter_versions",
            "adapters",
            "idempotency_keys",
            "blobs",
        ):
            connection.execute(text(f"DELETE FROM {table}"))
    for digest in digests:
        store.delete_blob(digest)
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="adapterreg-bench-"))
    adapter = work / "adapter"
    modules = make_adapter(adapter, args.size_mib)
    weights = adapter / "adapter_model.safetensors"
    weights_mib = weights.stat().st_size / MiB
    results: dict[str, dict[str, float | str]] = {}
    load = [f"{os.getloadavg()[0]:.1f}"]
    try:
        local_env = {
            "ADAPTERREG_DATABASE_URL": f"sqlite:///{work}/local.db",
            "ADAPTERREG_STORAGE_URL": (work / "blobs").as_uri(),
            "ADAPTERREG_HOME": str(work / "home"),
        }
        results["local"] = bench_backend(
            "local",
            local_env,
            adapter,
            modules,
            args.repeat,
            peer_push=lambda: shutil.copyfile(weights, work / "copy-in"),
            peer_pull=lambda: shutil.copyfile(work / "copy-in", work / "copy-out"),
            peer_name="shutil.copyfile",
            work=work,
        )
        results["s3"] = bench_s3(work, adapter, modules, weights, args.repeat)
        hash_times = run_times(lambda: file_digest(weights), args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load.append(f"{os.getloadavg()[0]:.1f}")
    print_results(results, load)
    # A push hashes the file in the client and again in the server, so one pass
    # of sha256 over the file is a lower bound on the time of a verified push.
    print(f"sha256 of the same file, one pass: {weights_mib / min(hash_times):.1f} MiB/s")


def bench_s3(
    work: Path, adapter: Path, modules: int, weights: Path, repeat: int
) -> dict[str, float | str]:
    port = free_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    aws = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    os.environ.update(aws)
    s3 = boto3.client("s3", endpoint_url=endpoint)
    s3.create_bucket(Bucket="bench")
    env = {
        **aws,
        "ADAPTERREG_DATABASE_URL": f"sqlite:///{work}/s3.db",
        "ADAPTERREG_STORAGE_URL": "s3://bench/registry",
        "ADAPTERREG_HOME": str(work / "home-s3"),
    }
    try:
        return bench_backend(
            "s3",
            env,
            adapter,
            modules,
            repeat,
            peer_push=lambda: s3.upload_file(str(weights), "bench", "raw/weights"),
            peer_pull=lambda: s3.download_file("bench", "raw/weights", str(work / "raw-out")),
            peer_name="boto3 upload_file/download_file",
            work=work,
        )
    finally:
        moto.stop()


def print_results(results: dict[str, dict[str, float | str]], load: list[str]) -> None:
    print(
        f"{'backend':8} {'op':5} {'registry MiB/s':>15} {'(range)':>10} {'peer MiB/s':>11} "
        f"{'(range)':>10} {'ratio':>6}  peer"
    )
    for backend, r in results.items():
        for op in ("push", "pull"):
            print(
                f"{backend:8} {op:5} {r[f'{op}_mib_s']:15.1f} {r[f'{op}_range']:>10} "
                f"{r[f'peer_{op}_mib_s']:11.1f} {r[f'peer_{op}_range']:>10} "
                f"{r[f'{op}_ratio']:6.2f}  {r['peer']}"
            )
        print(
            f"{backend:8} server peak RSS growth: {r['rss_growth_mib']:.1f} MiB "
            f"(adapter {r['size_mib']:.0f} MiB)"
        )
    print(f"1-minute load average: {' -> '.join(load)} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
