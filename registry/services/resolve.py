"""Resolution of a reference to what a serving system loads: digest, base model, download URLs."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from registry.services.versions import get_version_row, version_dict
from registry.storage.base import BlobStore


def resolve_reference(
    session: Session, store: BlobStore, ref: str, *, api_base_url: str, presign_ttl: int
) -> dict[str, Any]:
    """Resolve ``ref`` to an immutable version with a download URL per file.

    URLs are presigned object-store URLs where the store supports them (S3),
    otherwise the registry's own blob endpoint, which needs the caller's token.
    """
    details = version_dict(session, get_version_row(session, ref))
    files = []
    for entry in details["files"]:
        presigned = store.presign_get(
            entry["digest"], expires_in=presign_ttl, filename=entry["path"].rsplit("/", 1)[-1]
        )
        files.append(
            {
                **entry,
                "url": presigned or f"{api_base_url}/api/v1/blobs/{entry['digest']}",
                "presigned": presigned is not None,
            }
        )
    return {
        "ref": ref,
        "name": details["name"],
        "version": details["version"],
        "digest": details["digest"],
        "peft_type": details["peft_type"],
        "method": details["method"],
        "task_type": details["task_type"],
        "rank": details["rank"],
        "base_model": details["base_model"],
        "aliases": details["aliases"],
        "files": files,
        "url_expires_in": presign_ttl,
    }
