"""Strict parser of safetensors headers, without loading any tensor data.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes
of UTF-8 JSON, then the tensor data. The JSON maps each tensor name to
``{"dtype", "shape", "data_offsets"}``, with offsets relative to the first
byte after the header, and may contain a ``__metadata__`` map of strings.
This module accepts a header only if the tensors tile the data section
exactly: no gaps, no overlaps and no trailing bytes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import InvalidAdapter

HEADER_LENGTH_BYTES = 8
METADATA_KEY = "__metadata__"
TENSOR_FIELDS = frozenset({"dtype", "shape", "data_offsets"})

# Bits per element of each dtype the safetensors format defines (safetensors 0.8).
# F4 and F6 types are packed, so a tensor's bit count must be a whole number of bytes.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}

# safetensors stores shapes and offsets as unsigned 64-bit integers.
MAX_U64 = 2**64 - 1

SAVE_HINT = "save adapters with save_pretrained(safe_serialization=True)"


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    # Byte range [begin, end) relative to the first byte after the header.
    data_offsets: tuple[int, int]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    # Length N of the JSON header, without the 8-byte length prefix.
    header_size: int

    @property
    def data_start(self) -> int:
        """Return the file offset of the first tensor byte."""
        return HEADER_LENGTH_BYTES + self.header_size


def read_header_length(
    first8: bytes, *, file_size: int, max_header_bytes: int, filename: str
) -> int:
    """Return the JSON header length N declared by the first 8 bytes of a file.

    Raises InvalidAdapter for a file shorter than 8 bytes, a length above
    ``max_header_bytes`` or beyond the end of the file, and names a pickle or
    zip file (what ``torch.save`` writes) as such.
    """
    if len(first8) < HEADER_LENGTH_BYTES or file_size < HEADER_LENGTH_BYTES:
        _reject_foreign_format(first8, filename=filename)
        raise InvalidAdapter(
            f"{filename!r} is truncated: it has {min(len(first8), file_size)} bytes, "
            f"fewer than the {HEADER_LENGTH_BYTES}-byte header length of a safetensors file; "
            f"{SAVE_HINT}"
        )
    header_size = int.from_bytes(first8[:HEADER_LENGTH_BYTES], "little")
    if header_size <= max_header_bytes and 2 <= header_size <= file_size - HEADER_LENGTH_BYTES:
        return header_size
    # Only an implausible length reveals another format: a safetensors header of 640
    # to 1408 bytes starts with the same two bytes as a pickle.
    _reject_foreign_format(first8, filename=filename)
    if header_size > max_header_bytes:
        raise InvalidAdapter(
            f"header of {filename!r} declares {header_size} bytes, the limit is "
            f"{max_header_bytes}; the file is not safetensors or has far too many tensors"
        )
    if header_size < 2:
        raise InvalidAdapter(
            f"header of {filename!r} declares {header_size} bytes, too short for a JSON object"
        )
    raise InvalidAdapter(
        f"header of {filename!r} declares {header_size} bytes but the file has only "
        f"{file_size - HEADER_LENGTH_BYTES} bytes after the length prefix; "
        "the file is truncated or not safetensors"
    )


def parse_header(
    prefix: bytes, *, file_size: int, max_header_bytes: int, filename: str
) -> SafetensorsHeader:
    """Parse and check the header of a safetensors file from its first ``8 + N`` bytes.

    ``file_size`` is the size of the whole file, so the tensor offsets can be
    checked against the data section. Every failure raises InvalidAdapter.
    """
    header_size = read_header_length(
        prefix[:HEADER_LENGTH_BYTES],
        file_size=file_size,
        max_header_bytes=max_header_bytes,
        filename=filename,
    )
    end = HEADER_LENGTH_BYTES + header_size
    if len(prefix) < end:
        raise InvalidAdapter(
            f"header of {filename!r} is truncated: it declares {header_size} bytes but only "
            f"{len(prefix) - HEADER_LENGTH_BYTES} were read"
        )
    if prefix[HEADER_LENGTH_BYTES:end][:1] != b"{":
        _reject_foreign_format(prefix[:HEADER_LENGTH_BYTES], filename=filename)
    document = _decode_json(prefix[HEADER_LENGTH_BYTES:end], filename=filename)
    metadata = _parse_metadata(document.pop(METADATA_KEY, None), filename=filename)
    tensors = {
        name: _parse_tensor(name, entry, filename=filename) for name, entry in document.items()
    }
    _check_layout(tensors, data_size=file_size - end, filename=filename)
    return SafetensorsHeader(tensors=tensors, metadata=metadata, header_size=header_size)


def read_header_from_file(path: Path, *, max_header_bytes: int) -> SafetensorsHeader:
    """Read and check the header of a safetensors file on disk."""
    file_size = path.stat().st_size
    with path.open("rb") as file:
        first8 = file.read(HEADER_LENGTH_BYTES)
        header_size = read_header_length(
            first8, file_size=file_size, max_header_bytes=max_header_bytes, filename=path.name
        )
        prefix = first8 + file.read(header_size)
    return parse_header(
        prefix, file_size=file_size, max_header_bytes=max_header_bytes, filename=path.name
    )


def _reject_foreign_format(first8: bytes, *, filename: str) -> None:
    # torch.save writes a zip archive since torch 1.6 and a bare pickle before.
    if first8.startswith(b"PK\x03\x04"):
        raise InvalidAdapter(
            f"{filename!r} is a zip archive (the torch.save format), not safetensors; {SAVE_HINT}"
        )
    if len(first8) >= 2 and first8[0] == 0x80 and 2 <= first8[1] <= 5:
        raise InvalidAdapter(f"{filename!r} is a Python pickle, not safetensors; {SAVE_HINT}")


def _reject_json_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _decode_json(raw: bytes, *, filename: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidAdapter(
            f"header of {filename!r} is not valid UTF-8 at byte {e.start}; {SAVE_HINT}"
        ) from None
    if not text.startswith("{"):
        raise InvalidAdapter(
            f"header of {filename!r} must start with '{{', found {text[:16]!r}; {SAVE_HINT}"
        )
    try:
        document = json.loads(
            text,
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_json_constant,
        )
    except (ValueError, RecursionError) as e:
        raise InvalidAdapter(f"header of {filename!r} is not valid JSON: {e}") from None
    if not isinstance(document, dict):
        raise InvalidAdapter(
            f"header of {filename!r} must be a JSON object, found {type(document).__name__}"
        )
    return document


def _parse_metadata(value: Any, *, filename: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidAdapter(
            f"{METADATA_KEY} in {filename!r} must be an object of strings, "
            f"found {type(value).__name__}"
        )
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidAdapter(
                f"{METADATA_KEY}[{key!r}] in {filename!r} must be a string, "
                f"found {type(item).__name__} {item!r:.80}"
            )
    return dict(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_tensor(name: str, entry: Any, *, filename: str) -> TensorInfo:
    where = f"tensor {name!r} in {filename!r}"
    if not isinstance(entry, dict):
        raise InvalidAdapter(
            f"{where} must be an object with dtype, shape and data_offsets, "
            f"found {type(entry).__name__}"
        )
    if set(entry) != TENSOR_FIELDS:
        raise InvalidAdapter(
            f"{where} must have exactly the fields {sorted(TENSOR_FIELDS)}, found {sorted(entry)}"
        )
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise InvalidAdapter(
            f"{where} has unknown dtype {dtype!r:.80}; expected one of {sorted(DTYPE_BITS)}"
        )
    if not isinstance(shape, list) or not all(_is_int(d) and 0 <= d <= MAX_U64 for d in shape):
        raise InvalidAdapter(
            f"{where} has shape {shape!r:.120}; expected a list of non-negative 64-bit integers"
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) and 0 <= o <= MAX_U64 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise InvalidAdapter(
            f"{where} has data_offsets {offsets!r:.120}; expected [begin, end] with "
            "0 <= begin <= end"
        )
    info = TensorInfo(dtype=dtype, shape=tuple(shape), data_offsets=(offsets[0], offsets[1]))
    _check_byte_count(name, info, filename=filename)
    return info


def _check_byte_count(name: str, info: TensorInfo, *, filename: str) -> None:
    bits = info.numel * DTYPE_BITS[info.dtype]
    found = info.data_offsets[1] - info.data_offsets[0]
    if bits % 8 == 0 and bits // 8 == found:
        return
    if bits > 8 * MAX_U64:
        raise InvalidAdapter(
            f"tensor {name!r} in {filename!r} has shape {list(info.shape)!r:.120}, "
            "more bytes than a safetensors file can address"
        )
    needed = f"{bits // 8} bytes" if bits % 8 == 0 else f"{bits} bits, not a whole number of bytes"
    raise InvalidAdapter(
        f"tensor {name!r} in {filename!r} has dtype {info.dtype} and shape "
        f"{list(info.shape)!r:.120}, which needs {needed}, but data_offsets "
        f"{list(info.data_offsets)} span {found} bytes"
    )


def _check_layout(tensors: dict[str, TensorInfo], *, data_size: int, filename: str) -> None:
    expected_begin = 0
    previous = None
    for name, info in sorted(tensors.items(), key=lambda item: item[1].data_offsets):
        begin, end = info.data_offsets
        if begin != expected_begin:
            problem = "a gap" if begin > expected_begin else "an overlap"
            after = f"after tensor {previous!r}" if previous else "at the start of the data"
            raise InvalidAdapter(
                f"tensor {name!r} in {filename!r} starts at data offset {begin}, expected "
                f"{expected_begin} ({problem} {after})"
            )
        expected_begin = end
        previous = name
    if expected_begin != data_size:
        raise InvalidAdapter(
            f"tensors in {filename!r} cover {expected_begin} bytes of data but the file has "
            f"{data_size} bytes after the header; the file is truncated or has trailing bytes"
        )
