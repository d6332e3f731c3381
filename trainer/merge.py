"""Merge adapters: into their base weights, or several LoRA versions into one.

``merge_into_base`` folds one version into the base with peft's
``merge_and_unload``. On seeded sample inputs it compares the merged model's
logits with those of adapter-on-base: the max absolute difference, in float32,
after rounding the merged weights to the target dtype. Above the tolerance the
merge is rejected; otherwise it writes safetensors shards of at most
``max_shard_size`` and records a MergedModel with its lineage.

``combine_adapters`` mixes LoRA versions with ``add_weighted_adapter`` (linear,
cat, ties, dare_linear, dare_ties) and pushes the result as a new adapter
version whose parents carry their weights. Incompatible parents are rejected
from their records, before any model is loaded.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from registry import errors
from registry.base_manifest import FileEntry, file_digest
from registry.safetensors_format import read_header_from_file
from registry.services.merges import (
    DTYPES,
    MERGE_AND_UNLOAD,
    check_combination,
    check_merge_into_base,
)
from trainer.checkpoint import apply_umask_modes
from trainer.data import label_names, parse_dataset_ref
from trainer.evaluate import pulled_adapter, task_of
from trainer.models import cache_home, load_base_model, locate_base_model, verify_base_model

log = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = "2GB"
# Largest accepted |merged - adapter-on-base| per dtype: float32 differs only by
# summation order, half precisions by rounding the weights (about 3 and 2 digits).
DEFAULT_TOLERANCES = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Sample inputs of the equivalence check: sequences x tokens of seeded random ids.
SAMPLE_SHAPE = (4, 16)
MERGED_ADAPTER = "merged"


@dataclass(frozen=True)
class MergeOptions:
    """Options of ``merge_into_base``."""

    dtype: str = "float32"
    # Largest safetensors file written, as transformers reads it ("2GB", "500MB", bytes).
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE
    # Largest accepted max |difference|; None takes DEFAULT_TOLERANCES[dtype].
    tolerance: float | None = None
    # Also store the merged files as registry blobs.
    upload: bool = False
    seed: int = 0


def merge_into_base(
    client: Any, ref: str, out_dir: Path, *, register: str | None, options: MergeOptions
) -> dict[str, Any]:
    """Fold version ``ref`` into its base, verify equivalence, save, optionally register.

    Raises InvalidInput for a prompt-method adapter, an unknown dtype or a max
    difference above the tolerance (nothing is written then), Conflict when
    ``register`` names an existing merged model or ``out_dir`` is not empty.
    """
    version = client.get_version(ref)
    check_merge_into_base(version)
    tolerance = _check_options(options)
    if register:
        _check_name_free(client, register)
    _check_empty(out_dir)
    task = task_of(version)
    base_dir = _base_dir(client, version["base_model"]["name"])
    with pulled_adapter(client, version["ref"]) as adapter_dir:
        loaded = load_base_model(
            base_dir, task=task, labels=_labels(client, version, adapter_dir, task)
        )
        model = PeftModel.from_pretrained(loaded.model, adapter_dir).eval()
        inputs = sample_inputs(model.config.vocab_size, seed=options.seed)
        expected = _logits(model, inputs)
        merged = model.merge_and_unload()
    difference = max_abs_difference(merged, inputs, expected, dtype=options.dtype)
    if difference > tolerance:
        raise errors.InvalidInput(
            f"merging {version['ref']} changes the outputs by up to {difference:.3g}, above the "
            f"tolerance {tolerance:.3g} for {options.dtype}; nothing was written (raise "
            "--tolerance only if this difference is acceptable)"
        )
    files = _save(
        merged.to(TORCH_DTYPES[options.dtype]),
        loaded.tokenizer,
        out_dir,
        max_shard_size=options.max_shard_size,
    )
    log.info(
        "merged %s into %s: max |difference| %.3g, %d files",
        version["ref"],
        out_dir,
        difference,
        len(files),
    )
    result: dict[str, Any] = {
        "ref": version["ref"],
        "path": str(out_dir),
        "dtype": options.dtype,
        "max_abs_diff": difference,
        "tolerance": tolerance,
        "files": [entry.to_dict() for entry in files],
        "registered": None,
    }
    if register:
        result["registered"] = _register(client, register, version, result, files, options)
    return result


def _check_options(options: MergeOptions) -> float:
    if options.dtype not in DTYPES:
        raise errors.InvalidInput(
            f"unsupported --dtype {options.dtype!r}; use one of {', '.join(DTYPES)}"
        )
    tolerance = options.tolerance
    if tolerance is None:
        return DEFAULT_TOLERANCES[options.dtype]
    if not tolerance >= 0:
        raise errors.InvalidInput(f"--tolerance must be >= 0, got {tolerance!r}")
    return tolerance


def _check_name_free(client: Any, name: str) -> None:
    try:
        client.get_merged_model(name)
    except errors.NotFound:
        return
    raise errors.Conflict(f"a merged model named {name!r} already exists; pick another --register")


def _check_empty(out_dir: Path) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        raise errors.Conflict(
            f"output directory {str(out_dir)!r} is not empty; pass a new or empty --out"
        )


def _base_dir(client: Any, name: str) -> Path:
    record = client.get_base_model(name)
    directory = locate_base_model(record, client=client, cache_dir=cache_home())
    verify_base_model(directory, record)
    return directory


def _labels(client: Any, version: dict[str, Any], adapter_dir: Path, task: str) -> list[str] | None:
    """Label names for a seq-cls head: from the version's dataset, else generic ones."""
    if task != "seq-cls":
        return None
    for item in version.get("datasets") or []:
        record = client.get_dataset(*parse_dataset_ref(f"{item['name']}@{item['version']}"))
        if record.get("label_set"):
            return label_names(record)
    header = read_header_from_file(
        adapter_dir / "adapter_model.safetensors", max_header_bytes=16 * 1024 * 1024
    )
    for key, tensor in header.tensors.items():
        if key.endswith(("classifier.weight", "score.weight")) or (
            "modules_to_save" in key
            and key.endswith(".weight")
            and ("classifier" in key or "score" in key)
        ):
            return [f"LABEL_{index}" for index in range(tensor.shape[0])]
    raise errors.InvalidInput(
        f"{version['ref']} is seq-cls but neither its datasets nor its files give the number "
        "of labels"
    )


def sample_inputs(vocab_size: int, *, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random token ids of SAMPLE_SHAPE with a full attention mask."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, SAMPLE_SHAPE, generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


@torch.no_grad()
def _logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs).logits.float()


def max_abs_difference(
    merged: Any, inputs: dict[str, torch.Tensor], expected: torch.Tensor, *, dtype: str
) -> float:
    """Max |logits| difference after rounding the merged weights to ``dtype``, run in float32."""
    rounded = merged.to(TORCH_DTYPES[dtype]).float().eval()
    return float((_logits(rounded, inputs) - expected).abs().max())


def _save(
    model: Any, tokenizer: Any, out_dir: Path, *, max_shard_size: str | int
) -> list[FileEntry]:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(out_dir)
    apply_umask_modes(out_dir)
    return directory_entries(out_dir)


def directory_entries(directory: Path) -> list[FileEntry]:
    """Digest every file under ``directory`` (relative POSIX paths, sorted)."""
    entries = []
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digest, size = file_digest(path)
            entries.append(
                FileEntry(path=path.relative_to(directory).as_posix(), size=size, digest=digest)
            )
    return entries


def _register(
    client: Any,
    name: str,
    version: dict[str, Any],
    result: dict[str, Any],
    files: list[FileEntry],
    options: MergeOptions,
) -> dict[str, Any]:
    if options.upload:
        client.upload_files(Path(result["path"]), files)
    record: dict[str, Any] = client.register_merged_model(
        {
            "name": name,
            "parents": [{"ref": version["ref"], "weight": 1.0}],
            "method": MERGE_AND_UNLOAD,
            "dtype": options.dtype,
            "max_abs_diff": result["max_abs_diff"],
            "tolerance": result["tolerance"],
            "files": [entry.to_dict() for entry in files],
            "uploaded": options.upload,
            "details": {
                "path": str(Path(result["path"]).resolve()),
                "max_shard_size": str(options.max_shard_size),
                "sample_shape": list(SAMPLE_SHAPE),
                "seed": options.seed,
            },
        }
    )
    return record


@dataclass(frozen=True)
class CombineOptions:
    """Options of ``combine_adapters``."""

    method: str
    # One weight per parent, in order.
    weights: tuple[float, ...]
    # Fraction of delta weights kept by ties and dare_*; None for linear and cat.
    density: float | None = None
    # dare_* drop weights at random: the seed makes the result reproducible.
    seed: int = 0
    description: str | None = None


def combine_adapters(
    client: Any, refs: list[str], *, adapter: str, options: CombineOptions
) -> dict[str, Any]:
    """Combine LoRA versions into a new version of ``adapter`` with merge lineage.

    Raises InvalidInput, before any model is loaded, when the parents have
    different base models, methods or task types, unequal ranks for a method
    that needs equal ones, or classification heads that cannot be averaged.
    """
    versions = [client.get_version(ref) for ref in refs]
    check_combination(
        versions, combination=options.method, weights=list(options.weights), density=options.density
    )
    base_name = versions[0]["base_model"]["name"]
    base_dir = _base_dir(client, base_name)
    with tempfile.TemporaryDirectory(prefix="adapterreg-combine-") as scratch:
        combined_dir = _combine(
            client, versions, base_dir, Path(scratch), options=options, base_name=base_name
        )
        datasets = sorted(
            {f"{d['name']}@{d['version']}" for v in versions for d in v.get("datasets") or []}
        )
        pushed: dict[str, Any] = client.push(
            adapter,
            combined_dir,
            base_model=base_name,
            datasets=datasets,
            parents=[
                {"ref": v["ref"], "relation": "merge", "weight": w}
                for v, w in zip(versions, options.weights, strict=True)
            ],
            tags={"merge_method": options.method},
            description=options.description
            or f"{options.method} merge of {', '.join(v['ref'] for v in versions)}",
        )
    log.info("combined %s with %s into %s@%s", refs, options.method, adapter, pushed["version"])
    return pushed


def _combine(
    client: Any,
    versions: list[dict[str, Any]],
    base_dir: Path,
    scratch: Path,
    *,
    options: CombineOptions,
    base_name: str,
) -> Path:
    task = task_of(versions[0])
    names = [f"parent{index}" for index in range(len(versions))]
    with ExitStack() as stack:
        directories = [stack.enter_context(pulled_adapter(client, v["ref"])) for v in versions]
        loaded = load_base_model(
            base_dir, task=task, labels=_labels(client, versions[0], directories[0], task)
        )
        model = PeftModel.from_pretrained(loaded.model, directories[0], adapter_name=names[0])
        for name, directory in zip(names[1:], directories[1:], strict=True):
            model.load_adapter(directory, adapter_name=name)
        torch.manual_seed(options.seed)
        model.add_weighted_adapter(
            names,
            list(options.weights),
            adapter_name=MERGED_ADAPTER,
            combination_type=options.method,
            density=options.density,
        )
        model.set_adapter(MERGED_ADAPTER)
        for name in names:
            model.delete_adapter(name)
        # The registry name, not a local path, so the files do not depend on this machine.
        model.peft_config[MERGED_ADAPTER].base_model_name_or_path = base_name
        # No embedding check: it looks the base name up on the Hugging Face Hub, and
        # add_weighted_adapter never resizes the vocabulary.
        model.save_pretrained(str(scratch / "saved"), save_embedding_layers=False)
    # PEFT writes an adapter that is not named "default" into a subdirectory of its name.
    saved = scratch / "saved" / MERGED_ADAPTER
    result = scratch / "adapter"
    shutil.move(str(saved), result)
    return result
