"""File lists as clients declare them: paths, sizes and digests."""

from __future__ import annotations

import re
from typing import Any

from registry.base_manifest import FileEntry
from registry.errors import InvalidInput
from registry.storage.base import check_digest

# Relative POSIX paths of printable characters, no '..' segments.
_SEGMENT = re.compile(r"^[A-Za-z0-9._+@=-][A-Za-z0-9 ._+@=-]*$")
MAX_FILES = 10_000
MAX_PATH_BYTES = 255


def check_relative_path(path: Any) -> str:
    """Return ``path`` if it is a safe relative path inside a model directory."""
    if not isinstance(path, str) or not path:
        raise InvalidInput(f"invalid file path {path!r}: expected a non-empty string")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise InvalidInput(f"file path {path!r} is longer than {MAX_PATH_BYTES} bytes")
    segments = path.split("/")
    for segment in segments:
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            raise InvalidInput(
                f"invalid file path {path!r}: use relative paths of letters, digits, "
                "' ', '.', '_', '+', '@', '=' or '-', without '..', empty segments or control "
                "characters"
            )
    return path


def check_file_entries(value: Any, *, what: str) -> list[FileEntry]:
    """Parse ``[{"path", "size", "digest"}]`` strictly, rejecting duplicates."""
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"files of {what} must be a non-empty list of {{path, size, digest}}")
    if len(value) > MAX_FILES:
        raise InvalidInput(f"{what} lists {len(value)} files; the limit is {MAX_FILES}")
    entries: list[FileEntry] = []
    seen: set[str] = set()
    for item in value:
        if not isinstance(item, dict):
            raise InvalidInput(f"file entry {item!r} of {what} must be an object")
        path = check_relative_path(item.get("path"))
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(f"file {path!r} of {what} has invalid size {size!r}")
        digest = check_digest(item.get("digest", ""))
        if path in seen:
            raise InvalidInput(f"file {path!r} appears twice in {what}")
        seen.add(path)
        entries.append(FileEntry(path=path, size=size, digest=digest))
    return sorted(entries, key=lambda entry: entry.path)
