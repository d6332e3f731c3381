"""Software and hardware facts that a training run records."""

from __future__ import annotations

import logging
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

RECORDED_PACKAGES = ("torch", "peft", "transformers", "adapterreg")


def package_versions() -> dict[str, str | None]:
    """Return the installed version of each package in RECORDED_PACKAGES (None if absent)."""
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware_summary(*, device: torch.device, world_size: int) -> dict[str, Any]:
    gpu_names = (
        [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "device": device.type,
        "cpu_count": os.cpu_count(),
        "gpu_names": gpu_names,
        "world_size": world_size,
    }


def code_version() -> str | None:
    """Return the git commit of the adapterreg checkout, or None outside a git checkout.

    A checkout with uncommitted changes gets a ``-dirty`` suffix, because the
    commit alone does not identify the code that ran.
    """
    source = Path(__file__).resolve().parent
    try:
        commit = _git(source, "rev-parse", "HEAD")
        dirty = _git(source, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError) as error:
        logger.debug("no git commit for %s: %s", source, error)
        return None
    return f"{commit}-dirty" if dirty else commit


def _git(cwd: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
    )
    return completed.stdout.strip()
