"""The Python SDK of the registry API, used by the CLI, the trainer and notebooks.

    client = RegistryClient.from_env()
    client.push("support-bot", Path("out/adapter"), base_model="minilm")
    client.pull("support-bot@production", Path("serving/support-bot"))

Errors arrive as the classes of ``registry.errors``, rebuilt from the API's JSON
error body, so callers catch ``NotFound`` rather than HTTP status codes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import httpx

from registry import errors
from registry.base_manifest import FileEntry, file_digest, read_base_model_dir
from registry.client_lifecycle import LifecycleClientMixin
from registry.config import Settings
from registry.dataset_files import inspect_dataset
from registry.services.files import check_relative_path
from registry.services.names import parse_reference

log = logging.getLogger(__name__)

# Progress callback: (file path, bytes done, bytes total).
Progress = Callable[[str, int, int], None]

# Read size of uploads: larger reads mean fewer system calls and HTTP writes.
CHUNK_SIZE = 4 * 1024 * 1024
# Files up to this size go in one request; larger ones in resumable parts.
SINGLE_REQUEST_LIMIT = 64 * 1024 * 1024
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


class RegistryClient(LifecycleClientMixin):
    """A connection to one registry API."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 300.0,
        state_dir: Path | None = None,
        single_request_limit: int = SINGLE_REQUEST_LIMIT,
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=timeout)
        # Where resumable uploads remember their upload ids between attempts.
        self._state_dir = state_dir or Path(tempfile.gettempdir()) / "adapterreg-uploads"
        # Files larger than this (bytes) go as resumable uploads in parts.
        self.single_request_limit = single_request_limit

    @classmethod
    def from_env(cls) -> RegistryClient:
        settings = Settings.from_env()
        return cls(settings.url, settings.token, state_dir=settings.home / "uploads")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # Transport

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as e:
            raise errors.ServiceUnavailable(
                f"cannot reach the registry at {self.url} ({type(e).__name__}); start it with "
                "`adapterreg serve` or set ADAPTERREG_URL"
            ) from e
        if response.status_code >= 400:
            raise _error_from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", "/health")
        return result

    # Blobs

    def missing_blobs(self, digests: list[str]) -> list[str]:
        missing: list[str] = []
        for start in range(0, len(digests), 1000):
            body = {"digests": digests[start : start + 1000]}
            missing += self._json("POST", "/blobs/missing", json=body)["missing"]
        return missing

    def upload_blob(
        self, path: Path, entry: FileEntry, *, progress: Progress | None = None
    ) -> None:
        """Upload one file as a blob; large files go in resumable parts."""
        if entry.size <= self.single_request_limit:
            with path.open("rb") as handle:
                self._request(
                    "PUT",
                    f"/blobs/{entry.digest}",
                    content=_read_chunks(handle, entry.size, entry.path, progress),
                    headers={
                        "Content-Length": str(entry.size),
                        "Content-Type": "application/octet-stream",
                    },
                )
            return
        self._upload_in_parts(path, entry, progress=progress)

    def _upload_in_parts(self, path: Path, entry: FileEntry, *, progress: Progress | None) -> None:
        upload = self._resume_or_start_upload(entry)
        part_size, count = upload["part_size"], upload["part_count"]
        received = set(upload["received_parts"])
        pending = [n for n in range(1, count + 1) if n not in received]
        done = min((count - len(pending)) * part_size, entry.size)
        if progress:
            progress(entry.path, done, entry.size)
        # One part at a time and in order: the server then hashes the whole file
        # as it arrives and completing the upload needs no second pass over it.
        with path.open("rb") as handle:
            for number in pending:
                done += self._send_part(handle, upload, number, entry=entry)
                if progress:
                    progress(entry.path, min(done, entry.size), entry.size)
        self._request("POST", f"/uploads/{upload['upload_id']}/complete")
        self._forget_upload(entry.digest)

    def _send_part(
        self, handle: BinaryIO, upload: dict[str, Any], number: int, *, entry: FileEntry
    ) -> int:
        offset = (number - 1) * upload["part_size"]
        length = min(upload["part_size"], entry.size - offset)
        handle.seek(offset)
        self._request(
            "PUT",
            f"/uploads/{upload['upload_id']}/parts/{number}",
            content=_read_chunks(handle, length, entry.path, None),
            headers={"Content-Length": str(length), "Content-Type": "application/octet-stream"},
        )
        return length

    def _resume_or_start_upload(self, entry: FileEntry) -> dict[str, Any]:
        record = self._state_dir / f"{entry.digest.removeprefix('sha256:')}.json"
        if record.exists():
            upload_id = json.loads(record.read_text())["upload_id"]
            try:
                upload: dict[str, Any] = self._json("GET", f"/uploads/{upload_id}")
                log.info(
                    "resuming upload %s of %s: %d parts already there",
                    upload_id,
                    entry.path,
                    len(upload["received_parts"]),
                )
                return upload
            except errors.NotFound:
                log.info("upload %s of %s expired; starting over", upload_id, entry.path)
        upload = self._json("POST", "/uploads", json={"digest": entry.digest, "size": entry.size})
        self._state_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"upload_id": upload["upload_id"]}))
        return upload

    def _forget_upload(self, digest: str) -> None:
        (self._state_dir / f"{digest.removeprefix('sha256:')}.json").unlink(missing_ok=True)

    def upload_files(
        self, root: Path, entries: list[FileEntry], *, progress: Progress | None = None
    ) -> int:
        """Upload the blobs the registry lacks; return how many were sent."""
        missing = set(self.missing_blobs([entry.digest for entry in entries]))
        sent: set[str] = set()
        for entry in entries:
            if entry.digest in missing and entry.digest not in sent:
                self.upload_blob(root / entry.path, entry, progress=progress)
                sent.add(entry.digest)
            elif progress:
                progress(entry.path, entry.size, entry.size)
        return len(sent)

    def download_blob(
        self,
        url: str,
        destination: Path,
        *,
        digest: str,
        size: int,
        display_name: str,
        progress: Progress | None = None,
    ) -> None:
        """Download to ``destination``, verifying sha256; a mismatch raises IntegrityError."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
        hasher = hashlib.sha256()
        received = 0
        try:
            with self._stream(url) as response, temporary.open("wb") as handle:
                # Chunks as they come off the socket: re-chunking them costs a copy.
                for chunk in response.iter_bytes():
                    hasher.update(chunk)
                    handle.write(chunk)
                    received += len(chunk)
                    if progress:
                        progress(display_name, received, size)
            actual = "sha256:" + hasher.hexdigest()
            if actual != digest or received != size:
                raise errors.IntegrityError(
                    f"file {display_name!r} failed verification: expected {digest} "
                    f"({size} bytes), received {actual} ({received} bytes); the stored blob "
                    "is damaged, run `adapterreg fsck` on the server"
                )
            os.replace(temporary, destination)
        except httpx.TransportError as e:
            raise self._download_error(url, display_name, e) from e
        finally:
            temporary.unlink(missing_ok=True)

    def _is_registry_url(self, url: str) -> bool:
        return url.startswith(self.url + "/api/v1/")

    def _stream(self, url: str) -> _checked_stream:
        if self._is_registry_url(url):
            return _checked_stream(self._http, self._http.build_request("GET", url))
        # Presigned URLs carry their own credentials: never send our token there.
        presigned_client = httpx.Client(timeout=self._http.timeout)
        return _checked_stream(presigned_client, httpx.Request("GET", url), owns_client=True)

    def _download_error(
        self, url: str, display_name: str, error: httpx.TransportError
    ) -> errors.ServiceUnavailable:
        """Describe a failed download by file and host; the URL's query (a signature) stays out."""
        parts = urlsplit(url)
        host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if self._is_registry_url(url):
            return errors.ServiceUnavailable(
                f"download of {display_name!r} from the registry at {host} failed ({reason}); "
                "check that `adapterreg serve` is running there and try again"
            )
        return errors.StorageError(
            f"download of {display_name!r} from the object store at {host} failed ({reason}); "
            "check that the object store is running and reachable from this machine, then "
            "try again"
        )

    # Base models and datasets

    def register_base_model(
        self,
        name: str,
        path: Path,
        *,
        revision: str | None = None,
        source_uri: str | None = None,
        upload: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Record a local model directory: fingerprint and module manifest from headers."""
        info = read_base_model_dir(path, max_header_bytes=Settings.from_env().max_header_bytes)
        if upload:
            self.upload_files(path, info.files, progress=progress)
        body = {
            "name": name,
            "source_uri": source_uri or path.resolve().as_uri(),
            "revision": revision,
            "architecture": info.architecture,
            "fingerprint": info.fingerprint,
            "config": info.config,
            "manifest": info.manifest,
            "files": [entry.to_dict() for entry in info.files],
            "uploaded": upload,
        }
        result: dict[str, Any] = self._json("POST", "/base-models", json=body)
        return result

    def get_base_model(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/base-models/{name}")
        return result

    def list_base_models(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/base-models")["items"]
        return result

    def download_base_model(
        self, name: str, dest: Path, *, progress: Progress | None = None
    ) -> Path:
        """Download an uploaded base model's files into ``dest``, verifying each digest."""
        record = self.get_base_model(name)
        if not record["uploaded"]:
            raise errors.NotFound(
                f"base model {name!r} was registered without --upload; its files are at "
                f"{record['source_uri']!r}"
            )
        for entry in record["files"]:
            target = dest / check_relative_path(entry["path"])
            if target.exists() and file_digest(target)[0] == entry["digest"]:
                continue
            self.download_blob(
                f"{self.url}/api/v1/blobs/{entry['digest']}",
                target,
                digest=entry["digest"],
                size=entry["size"],
                display_name=entry["path"],
                progress=progress,
            )
        return dest

    def register_dataset(
        self,
        name: str,
        path: Path,
        *,
        version: str | None = None,
        upload: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Record a JSONL/CSV dataset version: sha256, rows, columns, labels, splits."""
        info = inspect_dataset(path)
        if upload:
            entry = FileEntry(path=path.name, size=info["size"], digest=info["digest"])
            self.upload_files(path.parent, [entry], progress=progress)
        body = {
            "name": name,
            "version": version,
            "uri": path.resolve().as_uri(),
            "uploaded": upload,
            **info,
        }
        result: dict[str, Any] = self._json("POST", "/datasets", json=body)
        return result

    def get_dataset(self, name: str, version: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/datasets/{name}/{version}")
        return result

    def list_datasets(self, name: str | None = None) -> list[dict[str, Any]]:
        params = {"name": name} if name else {}
        result: list[dict[str, Any]] = self._json("GET", "/datasets", params=params)["items"]
        return result

    def download_dataset(self, name: str, version: str, dest: Path) -> Path:
        """Download an uploaded dataset file to ``dest`` (a file path), verifying sha256."""
        record = self.get_dataset(name, version)
        if not record["uploaded"]:
            raise errors.NotFound(
                f"dataset {name}@{version} was registered without --upload; its file is at "
                f"{record['uri']!r}"
            )
        self.download_blob(
            f"{self.url}/api/v1/blobs/{record['digest']}",
            dest,
            digest=record["digest"],
            size=record["size"],
            display_name=f"{name}@{version}",
        )
        return dest

    # Adapters

    def push(
        self,
        name: str,
        directory: Path,
        *,
        base_model: str,
        datasets: list[str] | tuple[str, ...] = (),
        run: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        parents: list[dict[str, Any]] | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Upload a PEFT adapter directory as a new version; identical bytes return the old one.

        The old version keeps its tags: ``tags_ignored`` in the result lists the
        requested tags it lacks (empty when a version was created).
        """
        entries = adapter_file_entries(directory)
        self.upload_files(directory, entries, progress=progress)
        body = {
            "base_model": base_model,
            "files": [entry.to_dict() for entry in entries],
            "datasets": list(datasets),
            "run": run,
            "parents": parents or [],
            "tags": tags or {},
            "description": description,
        }
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        try:
            result = dict(
                self._json("POST", f"/adapters/{name}/versions", json=body, headers=headers)
            )
        except errors.NotFound as e:
            if "upload it before committing" not in e.detail:
                raise
            # A blob vanished between upload and commit (garbage collected): send it again.
            log.warning("push of %s: %s; uploading again", name, e.detail)
            self.upload_files(directory, entries, progress=progress)
            result = dict(
                self._json("POST", f"/adapters/{name}/versions", json=body, headers=headers)
            )
        result["tags_ignored"] = ignored_tags(tags or {}, result)
        return result

    def resolve(self, ref: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/resolve/{_reference_path(ref)}")
        return result

    def pull(self, ref: str, dest: Path, *, progress: Progress | None = None) -> dict[str, Any]:
        """Download a version into ``dest`` so that stock PeftModel.from_pretrained loads it.

        Files land in a staging directory next to ``dest`` and move into place only
        after every digest has been verified, so a failed pull leaves ``dest`` as it was.
        """
        resolved = self.resolve(ref)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        except OSError as e:
            raise _destination_error(dest, e) from e
        try:
            for entry in resolved["files"]:
                self.download_blob(
                    entry["url"],
                    staging / check_relative_path(entry["path"]),
                    digest=entry["digest"],
                    size=entry["size"],
                    display_name=entry["path"],
                    progress=progress,
                )
            dest.mkdir(exist_ok=True)
            for entry in resolved["files"]:
                target = dest / entry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / entry["path"], target)
        except OSError as e:
            # Network errors arrive as httpx exceptions, so an OSError here is local.
            raise _destination_error(dest, e) from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {**resolved, "path": str(dest)}

    def get_version(self, ref: str) -> dict[str, Any]:
        """Show a version: ``name`` (latest), ``name@3`` or ``name@alias``."""
        name, version = self._split_ref(ref)
        result: dict[str, Any] = self._json("GET", f"/adapters/{name}/versions/{version}")
        return result

    def _split_ref(self, ref: str) -> tuple[str, str]:
        """Return the URL path segments of a reference's name and version (or alias)."""
        reference = parse_reference(ref)
        if reference.version is not None:
            version = str(reference.version)
        elif reference.alias is not None:
            version = reference.alias
        else:
            version = str(self.resolve(reference.name)["version"])
        return quote(reference.name, safe=""), quote(version, safe="")

    def lineage(self, ref: str) -> dict[str, Any]:
        name, version = self._split_ref(ref)
        result: dict[str, Any] = self._json("GET", f"/adapters/{name}/versions/{version}/lineage")
        return result

    def list_adapters(self, **filters: Any) -> dict[str, Any]:
        params = {key: value for key, value in filters.items() if value is not None}
        result: dict[str, Any] = self._json("GET", "/adapters", params=params)
        return result

    def list_versions(self, name: str, **filters: Any) -> dict[str, Any]:
        params = {key: value for key, value in filters.items() if value is not None}
        result: dict[str, Any] = self._json("GET", f"/adapters/{name}/versions", params=params)
        return result

    def set_alias(
        self, name: str, alias: str, version: int, *, reason: str | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "PUT", f"/adapters/{name}/aliases/{alias}", json={"version": version, "reason": reason}
        )
        return result

    def rollback(self, name: str, alias: str, *, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json(
            "POST", f"/adapters/{name}/aliases/{alias}/rollback", json={"reason": reason}
        )
        return result

    def alias_history(self, name: str, alias: str | None = None) -> list[dict[str, Any]]:
        params = {"alias": alias} if alias else {}
        result: list[dict[str, Any]] = self._json(
            "GET", f"/adapters/{name}/aliases/history", params=params
        )["items"]
        return result

    def create_token(self, name: str, role: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", "/tokens", json={"name": name, "role": role})
        return result

    def audit_events(self, *, after_id: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json(
            "GET", "/audit", params={"after_id": after_id, "limit": limit}
        )["items"]
        return result


def adapter_file_entries(directory: Path) -> list[FileEntry]:
    """Digest the files of a PEFT adapter directory that the registry stores."""
    if not (directory / "adapter_config.json").is_file():
        raise errors.InvalidAdapter(
            f"{str(directory)!r} has no adapter_config.json; pass the directory that "
            "PeftModel.save_pretrained wrote"
        )
    unexpected = sorted(
        p.name
        for p in directory.iterdir()
        if p.name not in ADAPTER_FILES and not p.name.startswith(".")
    )
    if unexpected:
        raise errors.InvalidAdapter(
            f"{str(directory)!r} contains files the registry does not accept: {unexpected}; an "
            f"adapter version is {', '.join(ADAPTER_FILES)} (README.md optional). Save with "
            "save_pretrained(safe_serialization=True) into a clean directory"
        )
    entries = []
    for name in ADAPTER_FILES:
        path = directory / name
        if path.is_file():
            digest, size = file_digest(path)
            entries.append(FileEntry(path=name, size=size, digest=digest))
    return entries


def ignored_tags(requested: dict[str, str], version: dict[str, Any]) -> dict[str, str]:
    """Return the requested tags that an existing version returned by a push does not carry."""
    if version.get("created", True):
        return {}
    stored = version.get("tags") or {}
    return {key: value for key, value in requested.items() if stored.get(key) != value}


def _destination_error(dest: Path, error: OSError) -> errors.InvalidInput:
    failed_path = error.filename if error.filename is not None else dest
    reason = error.strerror or str(error)
    return errors.InvalidInput(
        f"cannot write the pulled files to {str(dest)!r}: {reason} ({str(failed_path)!r}); "
        "choose a destination directory you can create and write to"
    )


def _read_chunks(
    handle: BinaryIO, length: int, name: str, progress: Progress | None
) -> Iterator[bytes]:
    sent = 0
    while sent < length:
        chunk = handle.read(min(CHUNK_SIZE, length - sent))
        if not chunk:
            raise errors.InvalidInput(f"file {name!r} shrank while it was being uploaded")
        sent += len(chunk)
        if progress:
            progress(name, sent, length)
        yield chunk


class _checked_stream:
    """A streamed GET that raises the API's error on a 4xx/5xx before yielding bytes."""

    def __init__(
        self, http: httpx.Client, request: httpx.Request, *, owns_client: bool = False
    ) -> None:
        self._http = http
        self._request = request
        # A client made for this one download (presigned URLs) is closed with it.
        self._owns_client = owns_client
        self._response: httpx.Response | None = None

    def __enter__(self) -> httpx.Response:
        try:
            self._response = self._http.send(self._request, stream=True)
            if self._response.status_code >= 400:
                self._response.read()
                raise _error_from_response(self._response)
        except BaseException:
            self.__exit__()
            raise
        return self._response

    def __exit__(self, *_exc: object) -> None:
        if self._response is not None:
            self._response.close()
        if self._owns_client:
            self._http.close()


def _error_from_response(response: httpx.Response) -> errors.RegistryError:
    try:
        body = response.json()
        kind, detail = body["error"], body["detail"]
    except (ValueError, KeyError, TypeError):
        text = response.text[:500]
        kind, detail = "RegistryError", f"HTTP {response.status_code}: {text}"
    cls = errors.ERROR_CLASSES.get(kind)
    if cls is None or cls is errors.RegistryError:
        if response.status_code in (502, 503, 504):
            cls = errors.ServiceUnavailable
        elif response.status_code >= 500:
            cls = errors.InternalError
            detail = f"internal server error: {detail}"
        else:
            cls = errors.RegistryError
    return cls(detail)


def _reference_path(ref: str) -> str:
    """Validate a reference as the server does and percent-encode it as one path segment."""
    return quote(str(parse_reference(ref)), safe="@")
