"""Describe a base model directory: its files, digests, fingerprint and tensor manifest.

Only safetensors headers are read, so no tensor is ever loaded. The manifest
maps every tensor name of the top-level weight files to its shape and dtype,
and the adapter validator binds adapter modules to it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from registry.errors import InvalidAdapter, InvalidInput
from registry.safetensors_format import read_header_from_file
from registry.storage.base import check_digest

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
WEIGHTS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
# Directories skipped besides hidden ones (names starting with "."), which hold
# caches and editor state rather than model files.
SKIPPED_DIRECTORIES = frozenset({"__pycache__"})
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DIGEST_CHUNK_BYTES = 1024 * 1024
CONVERT_HINT = (
    "convert them with transformers: AutoModel.from_pretrained(path)"
    ".save_pretrained(path, safe_serialization=True)"
)


@dataclass(frozen=True)
class FileEntry:
    """One file of a model directory: POSIX path relative to the directory, size and sha256."""

    path: str
    size: int
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "digest": self.digest}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileEntry:
        """Build an entry from ``to_dict`` output, raising InvalidInput if it is malformed."""
        path, size, digest = data.get("path"), data.get("size"), data.get("digest")
        if not isinstance(path, str) or not path:
            raise InvalidInput(f"file entry {data!r:.200} needs a non-empty string 'path'")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput(
                f"file entry for {path!r} needs a non-negative integer 'size', found {size!r}"
            )
        if not isinstance(digest, str):
            raise InvalidInput(
                f"file entry for {path!r} needs a string 'digest' 'sha256:<hex>', found {digest!r}"
            )
        return cls(path=path, size=size, digest=check_digest(digest))


@dataclass(frozen=True)
class BaseModelInfo:
    architecture: str
    config: dict[str, Any]
    files: list[FileEntry]
    # Tensor name -> {"shape": [...], "dtype": "F32"} from the safetensors headers.
    manifest: dict[str, dict[str, Any]] = field(repr=False)
    fingerprint: str


def file_digest(path: Path) -> tuple[str, int]:
    """Return ``("sha256:<hex>", size in bytes)`` of a file, reading it in 1 MiB chunks."""
    sha256 = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(DIGEST_CHUNK_BYTES):
            sha256.update(chunk)
            size += len(chunk)
    return f"sha256:{sha256.hexdigest()}", size


def is_fingerprint_file(path: str) -> bool:
    """Return whether a relative path counts towards the fingerprint (config and weights)."""
    return path == CONFIG_FILE or path.endswith((WEIGHTS_SUFFIX, INDEX_SUFFIX))


def compute_fingerprint(files: list[FileEntry]) -> str:
    """Return the fingerprint of a base model, ``sha256:<hex>``, from its file entries.

    The hash covers the sorted lines ``f"{path}\\t{digest}\\n"`` of the config.json,
    ``*.safetensors`` and ``*.safetensors.index.json`` entries of ``files``. Other
    files (tokenizer, README) do not change the fingerprint, so a server can
    recompute it from the file digests a client sends.
    """
    selected = sorted(
        (entry for entry in files if is_fingerprint_file(entry.path)), key=lambda e: e.path
    )
    paths = [entry.path for entry in selected]
    if CONFIG_FILE not in paths or not any(p.endswith(WEIGHTS_SUFFIX) for p in paths):
        raise InvalidInput(
            f"a base model fingerprint needs {CONFIG_FILE} and at least one *{WEIGHTS_SUFFIX} "
            f"file, found {paths!r}"
        )
    sha256 = hashlib.sha256()
    for entry in selected:
        sha256.update(f"{entry.path}\t{entry.digest}\n".encode())
    return f"sha256:{sha256.hexdigest()}"


def read_base_model_dir(path: Path, *, max_header_bytes: int) -> BaseModelInfo:
    """Describe the base model in directory ``path`` without loading its tensors.

    Raises InvalidInput when the directory has no config.json, no safetensors
    weights (pickled ``.bin``/``.pt`` weights are rejected), or a shard index
    that does not agree with the shards or a malformed safetensors header.
    """
    if not path.is_dir():
        raise InvalidInput(f"base model path {str(path)!r} is not a directory")
    config = _read_config(path)
    files = [_file_entry(path, relative) for relative in sorted(_list_files(path))]
    manifest = _read_manifest(path, files, max_header_bytes=max_header_bytes)
    info = BaseModelInfo(
        architecture=_architecture(config, directory=path),
        config=config,
        files=files,
        manifest=manifest,
        fingerprint=compute_fingerprint(files),
    )
    logger.info(
        "read base model %s: %s, %d files, %d tensors, fingerprint %s",
        path,
        info.architecture,
        len(files),
        len(manifest),
        info.fingerprint,
    )
    return info


def _read_json_object(path: Path, *, kind: str) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidInput(f"{kind} {str(path)!r} is not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise InvalidInput(
            f"{kind} {str(path)!r} must be a JSON object, found {type(document).__name__}"
        )
    return document


def _read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise InvalidInput(
            f"base model directory {str(directory)!r} has no {CONFIG_FILE}; "
            "save the model with save_pretrained() to write one"
        )
    return _read_json_object(config_path, kind="model config")


def _architecture(config: dict[str, Any], *, directory: Path) -> str:
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        return model_type
    raise InvalidInput(
        f"{CONFIG_FILE} in {str(directory)!r} names no architecture: expected a non-empty "
        "'architectures' list or a 'model_type' string"
    )


def _list_files(directory: Path) -> Iterator[str]:
    """Yield the POSIX paths, relative to ``directory``, of its files in sorted order.

    Hidden entries and SKIPPED_DIRECTORIES are left out. Symbolic links to
    files are followed, as in the Hugging Face cache, but links to directories
    are not.
    """
    for root, directories, filenames in os.walk(directory):
        directories[:] = sorted(
            d for d in directories if not d.startswith(".") and d not in SKIPPED_DIRECTORIES
        )
        relative_root = PurePosixPath(Path(root).relative_to(directory).as_posix())
        for name in sorted(filenames):
            if not name.startswith(".") and (Path(root) / name).is_file():
                yield str(relative_root / name)


def _file_entry(directory: Path, relative: str) -> FileEntry:
    digest, size = file_digest(directory / relative)
    return FileEntry(path=relative, size=size, digest=digest)


def _weight_files(directory: Path, files: list[FileEntry]) -> list[str]:
    """Return the top-level safetensors files that make up the model's weights."""
    top_level = [entry.path for entry in files if "/" not in entry.path]
    indexes = [p for p in top_level if p.endswith(INDEX_SUFFIX)]
    if len(indexes) > 1:
        raise InvalidInput(
            f"base model directory {str(directory)!r} has several shard indexes {indexes!r}; "
            "keep the one of the weights to register"
        )
    if indexes:
        return _shards_of_index(directory, indexes[0], top_level)
    weights = [p for p in top_level if p.endswith(WEIGHTS_SUFFIX)]
    if SINGLE_WEIGHTS_FILE in weights:
        return [SINGLE_WEIGHTS_FILE]
    if weights:
        return weights
    pickled = [p for p in top_level if p.endswith(PICKLE_WEIGHT_SUFFIXES)]
    if pickled:
        raise InvalidInput(
            f"base model directory {str(directory)!r} has only pickled weights {pickled!r}; "
            f"safetensors weights are required, {CONVERT_HINT}"
        )
    raise InvalidInput(
        f"base model directory {str(directory)!r} has no *{WEIGHTS_SUFFIX} weights; "
        f"save the model with save_pretrained(path, safe_serialization=True)"
    )


def _shards_of_index(directory: Path, index_name: str, top_level: list[str]) -> list[str]:
    index = _read_json_object(directory / index_name, kind="shard index")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidInput(
            f"shard index {index_name!r} needs a non-empty 'weight_map' object of "
            "tensor name -> shard file"
        )
    shards = sorted({str(shard) for shard in weight_map.values()})
    for shard in shards:
        if shard not in top_level or not shard.endswith(WEIGHTS_SUFFIX):
            raise InvalidInput(
                f"shard index {index_name!r} names shard {shard!r}, which is not a "
                f"*{WEIGHTS_SUFFIX} file in {str(directory)!r}"
            )
    return shards


def _read_manifest(
    directory: Path, files: list[FileEntry], *, max_header_bytes: int
) -> dict[str, dict[str, Any]]:
    weight_files = _weight_files(directory, files)
    manifest: dict[str, dict[str, Any]] = {}
    owners: dict[str, str] = {}
    for weight_file in weight_files:
        try:
            header = read_header_from_file(
                directory / weight_file, max_header_bytes=max_header_bytes
            )
        except InvalidAdapter as e:
            raise InvalidInput(f"base model weights are invalid: {e.detail}") from e
        for name, tensor in header.tensors.items():
            if name in owners:
                raise InvalidInput(
                    f"tensor {name!r} is in both {owners[name]!r} and {weight_file!r}; "
                    "a base model must define each tensor once"
                )
            owners[name] = weight_file
            manifest[name] = {"shape": list(tensor.shape), "dtype": tensor.dtype}
    _check_index_agrees(directory, files, owners)
    return manifest


def _check_index_agrees(directory: Path, files: list[FileEntry], owners: dict[str, str]) -> None:
    indexes = [e.path for e in files if "/" not in e.path and e.path.endswith(INDEX_SUFFIX)]
    if not indexes:
        return
    weight_map = _read_json_object(directory / indexes[0], kind="shard index")["weight_map"]
    for name, shard in weight_map.items():
        if owners.get(name) != shard:
            found = f"in {owners[name]!r}" if name in owners else "in no shard"
            raise InvalidInput(
                f"shard index {indexes[0]!r} places tensor {name!r} in {shard!r}, found {found}"
            )
    extra = sorted(set(owners) - set(weight_map))
    if extra:
        raise InvalidInput(
            f"shards hold tensors missing from {indexes[0]!r}: {extra[:5]!r}; "
            "regenerate the index with save_pretrained()"
        )
