"""Settings read from ``ADAPTERREG_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import InvalidInput

ENV_PREFIX = "ADAPTERREG_"
DEFAULT_HOME = Path(".adapterreg")
DEFAULT_URL = "http://127.0.0.1:8765"

MiB = 1024 * 1024


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(
            f"{ENV_PREFIX}{name}={raw!r} is not an integer; set it to a whole number"
        ) from None


def _env_list(name: str) -> list[str]:
    raw = os.environ.get(ENV_PREFIX + name, "")
    return [item.strip() for item in raw.split(",") if item.strip()]


@dataclass(frozen=True)
class Settings:
    """Server and client configuration; every field has an ``ADAPTERREG_`` variable."""

    home: Path = DEFAULT_HOME
    # SQLAlchemy URL of the metadata database (DATABASE_URL).
    database_url: str = ""
    # file:///path or s3://bucket/prefix (STORAGE_URL).
    storage_url: str = ""
    # Where clients find the API (URL) and the token they send (TOKEN).
    url: str = DEFAULT_URL
    token: str | None = None
    # Base URL that download links point at, when clients reach the API through a proxy
    # (PUBLIC_URL); by default the URL each request arrived on.
    public_url: str | None = None
    # Bind address of `adapterreg serve` (HOST, PORT).
    host: str = "127.0.0.1"
    port: int = 8765
    # auto: open on loopback when no token exists, tokens required elsewhere;
    # required: always require a token; open: never (loopback only).
    auth: str = "auto"
    # Largest single blob accepted, in bytes (MAX_BLOB_BYTES).
    max_blob_bytes: int = 8 * 1024 * MiB
    # Largest safetensors JSON header accepted, in bytes (MAX_HEADER_BYTES).
    max_header_bytes: int = 16 * MiB
    # Size of one part of a resumable upload, in bytes (PART_SIZE).
    part_size: int = 64 * MiB
    # Orphan blobs and abandoned uploads younger than this survive `gc`, in seconds.
    gc_grace_seconds: int = 24 * 3600
    # Lifetime of presigned download URLs, in seconds (PRESIGN_TTL).
    presign_ttl: int = 3600
    webhook_urls: list[str] = field(default_factory=list)
    webhook_secret: str | None = None

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(_env("HOME", str(DEFAULT_HOME)))
        auth = _env("AUTH", "auto")
        if auth not in ("auto", "required", "open"):
            raise InvalidInput(
                f"{ENV_PREFIX}AUTH={auth!r} is not valid; use auto, required or open"
            )
        return cls(
            home=home,
            database_url=_env("DATABASE_URL", f"sqlite:///{(home / 'registry.db').resolve()}"),
            storage_url=_env("STORAGE_URL", (home / "blobs").resolve().as_uri()),
            url=_env("URL", DEFAULT_URL).rstrip("/"),
            token=os.environ.get(ENV_PREFIX + "TOKEN") or None,
            public_url=(os.environ.get(ENV_PREFIX + "PUBLIC_URL") or "").rstrip("/") or None,
            host=_env("HOST", "127.0.0.1"),
            port=_env_int("PORT", 8765),
            auth=auth,
            max_blob_bytes=_env_int("MAX_BLOB_BYTES", 8 * 1024 * MiB),
            max_header_bytes=_env_int("MAX_HEADER_BYTES", 16 * MiB),
            part_size=_env_int("PART_SIZE", 64 * MiB),
            gc_grace_seconds=_env_int("GC_GRACE_SECONDS", 24 * 3600),
            presign_ttl=_env_int("PRESIGN_TTL", 3600),
            webhook_urls=_env_list("WEBHOOK_URLS"),
            webhook_secret=os.environ.get(ENV_PREFIX + "WEBHOOK_SECRET") or None,
        )
