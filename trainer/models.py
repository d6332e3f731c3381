"""Base models: find the files of a registered base model, verify them, load the model.

A base model's files come from the first of these that applies:

1. its ``source_uri`` when that is a local directory (``file://`` URI or plain path);
2. the registry's blobs, when the base model was uploaded, downloaded into
   ``$ADAPTERREG_HOME/cache`` (default ``~/.cache/adapterreg``);
3. the Hugging Face Hub, when ``source_uri`` is ``hf://org/name`` or ``org/name``
   and HF_HUB_OFFLINE is not set.

Before training, the config and weight files are hashed and compared with the
registered digests and fingerprint, so an adapter is never trained on other
weights than the ones its version will name.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.utils import logging as transformers_logging

from registry.base_manifest import FileEntry, compute_fingerprint, file_digest, is_fingerprint_file
from registry.errors import IntegrityError, InvalidInput, NotFound
from trainer.data import local_path_of_uri

logger = logging.getLogger(__name__)

HF_PREFIX = "hf://"
# A Hugging Face repository id: "org/name" with the characters the Hub allows.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    """A base model ready for PEFT, with its tokenizer."""

    model: PreTrainedModel
    tokenizer: Any
    # Modules created at load time rather than read from the checkpoint (a new
    # classification head). They are trained in full and saved with the adapter.
    new_modules: list[str]


def cache_home() -> Path:
    """Return ``$ADAPTERREG_HOME/cache`` when the variable is set, else ``~/.cache/adapterreg``."""
    home = os.environ.get("ADAPTERREG_HOME")
    if home:
        return Path(home) / "cache"
    return Path.home() / ".cache" / "adapterreg"


def locate_base_model(record: dict[str, Any], *, client: Any | None, cache_dir: Path) -> Path:
    """Return a local directory with the base model's files; download them when needed.

    Raises NotFound when the files are neither local, uploaded nor on a reachable hub.
    """
    name = str(record.get("name"))
    source_uri = str(record.get("source_uri") or "")
    local = local_path_of_uri(source_uri)
    if local is not None and local.is_dir():
        return local
    if record.get("uploaded") and client is not None:
        target = cache_dir / "base-models" / name / _fingerprint_hex(record)[:16]
        logger.info("downloading base model %s to %s", name, target)
        downloaded: Path = client.download_base_model(name, target)
        return downloaded
    hub_id = _hub_id(source_uri)
    if hub_id is not None and not _hub_offline():
        return _download_from_hub(hub_id, revision=record.get("revision"))
    raise NotFound(
        f"base model {name!r}: no local directory at {source_uri!r}, not uploaded to the "
        "registry"
        + (", and HF_HUB_OFFLINE is set" if hub_id else "")
        + "; register it again with --upload, or place its files at that path"
    )


def _fingerprint_hex(record: dict[str, Any]) -> str:
    fingerprint = str(record.get("fingerprint") or "")
    return fingerprint.removeprefix("sha256:") or "unknown"


def _hub_id(source_uri: str) -> str | None:
    candidate = source_uri.removeprefix(HF_PREFIX)
    if _HUB_ID.match(candidate) and not Path(candidate).exists():
        return candidate
    return None


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _download_from_hub(hub_id: str, *, revision: Any) -> Path:
    # NOTE: never run by the tests, which are offline; it is the standard
    # huggingface_hub call and the fingerprint check below still applies.
    from huggingface_hub import snapshot_download

    logger.info(
        "downloading base model %s (revision %s) from the Hugging Face Hub", hub_id, revision
    )
    return Path(snapshot_download(hub_id, revision=str(revision) if revision else None))


def verify_base_model(directory: Path, record: dict[str, Any]) -> None:
    """Hash the config and weight files and compare them with the registered record.

    Raises IntegrityError naming the first file that is missing or differs, or
    when the fingerprint over all of them differs.
    """
    name = record.get("name")
    registered = [FileEntry.from_dict(entry) for entry in record.get("files") or []]
    checked = [entry for entry in registered if is_fingerprint_file(entry.path)]
    if not checked:
        raise InvalidInput(
            f"base model {name!r} lists no config or weight files; register it again"
        )
    found: list[FileEntry] = []
    for entry in checked:
        path = directory / entry.path
        if not path.is_file():
            raise IntegrityError(
                f"base model {name!r}: {entry.path!r} is missing from {str(directory)!r}"
            )
        digest, size = file_digest(path)
        if digest != entry.digest:
            raise IntegrityError(
                f"base model {name!r}: {entry.path!r} in {str(directory)!r} has digest {digest}, "
                f"registered {entry.digest}; the files changed since registration, so register "
                "them as a new base model"
            )
        found.append(FileEntry(path=entry.path, size=size, digest=digest))
    fingerprint = compute_fingerprint(found)
    if fingerprint != record.get("fingerprint"):
        raise IntegrityError(
            f"base model {name!r} in {str(directory)!r} has fingerprint {fingerprint}, "
            f"registered {record.get('fingerprint')}; register the base model again"
        )


def load_base_model(
    directory: Path,
    *,
    task: str,
    labels: list[str] | None = None,
    quantization: Any | None = None,
) -> LoadedModel:
    """Load tokenizer and model for ``task``; seq-cls gets a new head with one logit per label."""
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.pad_token_id is None:
        # Decoder tokenizers often have no padding token; padded positions are
        # masked out of attention and loss, so the end-of-sequence token serves.
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"output_loading_info": True}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if task == "seq-cls":
        if not labels:
            raise InvalidInput("--task seq-cls needs a dataset with a label set")
        # The new head is expected: its weights come from training or from the
        # adapter's saved modules, so transformers' "MISSING ... consider training"
        # report would only mislead. The missing keys still reach _new_modules.
        with _transformers_errors_only():
            loaded = AutoModelForSequenceClassification.from_pretrained(
                directory,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={label: index for index, label in enumerate(labels)},
                **kwargs,
            )
    else:
        loaded = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    # output_loading_info=True makes from_pretrained return (model, loading info).
    model, info = cast(tuple[PreTrainedModel, dict[str, Any]], loaded)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, new_modules=_new_modules(model, info))


@contextmanager
def _transformers_errors_only() -> Iterator[None]:
    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)


def _new_modules(model: torch.nn.Module, info: dict[str, Any]) -> list[str]:
    """Return the names of modules whose weights were missing from the checkpoint."""
    module_names = {name for name, _ in model.named_modules()}
    modules: set[str] = set()
    for key in info.get("missing_keys") or []:
        module = str(key).rpartition(".")[0]
        if module in module_names:
            modules.add(module)
    return sorted(modules)
