"""Safetensors header parsing against files written by the real safetensors library."""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save, save_file

from registry.errors import InvalidAdapter
from registry.safetensors_format import (
    DTYPE_BITS,
    SafetensorsHeader,
    parse_header,
    read_header_from_file,
    read_header_length,
)

LIMIT = 1024 * 1024
NAME = "adapter_model.safetensors"


def parse(data: bytes, *, limit: int = LIMIT) -> SafetensorsHeader:
    return parse_header(data, file_size=len(data), max_header_bytes=limit, filename=NAME)


def build(header: Mapping[str, object], data_size: int) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(data_size)


@pytest.fixture(scope="module")
def valid_file() -> bytes:
    torch.manual_seed(0)
    tensors = {
        "base_model.model.q.lora_A.weight": torch.randn(4, 8),
        "base_model.model.q.lora_B.weight": torch.randn(8, 4, dtype=torch.float16),
        "scalar": torch.tensor(3, dtype=torch.int64),
        "empty": torch.zeros(0, 5),
    }
    return save(tensors, metadata={"format": "pt"})


def test_parse_header_matches_safe_open(tmp_path: Path) -> None:
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.ones(7, dtype=torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "d": torch.tensor([True, False]),
        "e": torch.zeros(2, 2, dtype=torch.float8_e4m3fn),
        "f": torch.zeros(4, dtype=torch.uint8),
    }
    path = tmp_path / NAME
    save_file(tensors, path, metadata={"format": "pt", "note": "x"})

    header = read_header_from_file(path, max_header_bytes=LIMIT)

    with safe_open(path, "pt") as reference:
        assert sorted(header.tensors) == sorted(reference.keys())
        for name in reference.keys():  # noqa: SIM118 - safe_open is not iterable
            tensor_slice = reference.get_slice(name)
            assert header.tensors[name].dtype == tensor_slice.get_dtype()
            assert list(header.tensors[name].shape) == tensor_slice.get_shape()
        assert header.metadata == reference.metadata()


def test_parse_header_offsets_locate_bytes(valid_file: bytes) -> None:
    header = parse(valid_file)

    begin, end = header.tensors["scalar"].data_offsets
    raw = valid_file[header.data_start + begin : header.data_start + end]
    assert int.from_bytes(raw, "little") == 3
    assert header.tensors["scalar"].shape == ()
    assert header.tensors["empty"].data_offsets[0] == header.tensors["empty"].data_offsets[1]


def test_read_header_length_then_range(valid_file: bytes) -> None:
    length = read_header_length(
        valid_file[:8], file_size=len(valid_file), max_header_bytes=LIMIT, filename=NAME
    )

    header = parse_header(
        valid_file[: 8 + length], file_size=len(valid_file), max_header_bytes=LIMIT, filename=NAME
    )

    assert header.header_size == length
    assert len(header.tensors) == 4


def test_pickle_renamed_rejected(tmp_path: Path) -> None:
    path = tmp_path / NAME
    torch.save({"w": torch.randn(64, 64)}, path, _use_new_zipfile_serialization=False)

    with pytest.raises(InvalidAdapter) as caught:
        read_header_from_file(path, max_header_bytes=LIMIT)

    assert "is a Python pickle, not safetensors" in caught.value.detail
    assert "safe_serialization=True" in caught.value.detail


def test_torch_zip_renamed_rejected(tmp_path: Path) -> None:
    path = tmp_path / NAME
    torch.save({"w": torch.randn(4, 4)}, path)

    with pytest.raises(InvalidAdapter) as caught:
        read_header_from_file(path, max_header_bytes=LIMIT)

    assert "zip archive" in caught.value.detail
    assert NAME in caught.value.detail


def test_header_of_pickle_length_accepted() -> None:
    # A 640-byte header starts with the bytes 0x80 0x02, like a protocol 2 pickle.
    header = {
        f"t{i:03d}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(9)
    }
    raw = json.dumps(header).encode().ljust(640, b" ")
    data = struct.pack("<Q", 640) + raw + bytes(9)

    assert data[:2] == b"\x80\x02"
    assert len(parse(data).tensors) == 9


def test_truncated_file_rejected() -> None:
    with pytest.raises(InvalidAdapter) as caught:
        parse(b"\x10\x00\x00")

    assert "truncated" in caught.value.detail
    assert "3 bytes" in caught.value.detail


def test_truncated_header_rejected(valid_file: bytes) -> None:
    with pytest.raises(InvalidAdapter) as caught:
        parse_header(
            valid_file[:20], file_size=len(valid_file), max_header_bytes=LIMIT, filename=NAME
        )

    assert "header of 'adapter_model.safetensors' is truncated" in caught.value.detail


def test_truncated_data_rejected(valid_file: bytes) -> None:
    with pytest.raises(InvalidAdapter) as caught:
        parse(valid_file[:-4])

    assert "truncated or has trailing bytes" in caught.value.detail


def test_trailing_bytes_rejected(valid_file: bytes) -> None:
    with pytest.raises(InvalidAdapter) as caught:
        parse(valid_file + b"\x00")

    assert "truncated or has trailing bytes" in caught.value.detail


def test_oversized_header_rejected(valid_file: bytes) -> None:
    length = int.from_bytes(valid_file[:8], "little")

    with pytest.raises(InvalidAdapter) as caught:
        parse(valid_file, limit=length - 1)

    assert caught.value.detail.startswith(
        f"header of 'adapter_model.safetensors' declares {length} bytes, the limit is {length - 1}"
    )


def test_header_beyond_file_rejected() -> None:
    data = struct.pack("<Q", 1000) + b"{}"

    with pytest.raises(InvalidAdapter) as caught:
        parse(data)

    assert "declares 1000 bytes but the file has only 2" in caught.value.detail


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"[1, 2]", "must start with '{'"),
        (b'{"a": }', "not valid JSON"),
        (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
        (b'{"x": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 0]}}', "not valid JSON"),
        (b"{" + b'"a":' * 1 + b"[" * 100_000 + b"]" * 100_000 + b"}", "not valid JSON"),
    ],
)
def test_malformed_json_rejected(raw: bytes, expected: str) -> None:
    data = struct.pack("<Q", len(raw)) + raw

    with pytest.raises(InvalidAdapter) as caught:
        parse(data)

    assert expected in caught.value.detail
    assert NAME in caught.value.detail


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}, "unknown dtype 'F33'"),
        ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "unknown dtype"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "has shape [-1]"),
        ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "has shape [True]"),
        ({"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}, "has shape [1.0]"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "has data_offsets [4, 0]"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0]}, "has data_offsets [0]"),
        ({"dtype": "F32", "shape": [1]}, "must have exactly the fields"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}, "exactly the fields"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}, "needs 8 bytes"),
        ({"dtype": "F4", "shape": [3], "data_offsets": [0, 4]}, "not a whole number of bytes"),
        ({"dtype": "F32", "shape": [2**63] * 3, "data_offsets": [0, 4]}, "more bytes than"),
        ("tensor", "must be an object"),
    ],
)
def test_invalid_tensor_entry_rejected(entry: object, expected: str) -> None:
    with pytest.raises(InvalidAdapter) as caught:
        parse(build({"lora_A": entry}, 4))

    assert expected in caught.value.detail
    assert "tensor 'lora_A'" in caught.value.detail


def test_gap_between_tensors_rejected() -> None:
    header = {
        "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "b": {"dtype": "U8", "shape": [4], "data_offsets": [6, 10]},
    }

    with pytest.raises(InvalidAdapter) as caught:
        parse(build(header, 10))

    assert "tensor 'b'" in caught.value.detail
    assert "starts at data offset 6, expected 4 (a gap after tensor 'a')" in caught.value.detail


def test_overlapping_tensors_rejected() -> None:
    header = {
        "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
        "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
    }

    with pytest.raises(InvalidAdapter) as caught:
        parse(build(header, 6))

    assert "expected 4 (an overlap after tensor 'a')" in caught.value.detail


def test_metadata_must_be_strings() -> None:
    header = {
        "__metadata__": {"format": 1},
        "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
    }

    with pytest.raises(InvalidAdapter) as caught:
        parse(build(header, 1))

    assert "__metadata__['format']" in caught.value.detail


def test_every_dtype_accepted() -> None:
    header = {}
    offset = 0
    for index, (dtype, bits) in enumerate(sorted(DTYPE_BITS.items())):
        count = 8  # a whole number of bytes even for 4- and 6-bit types
        size = count * bits // 8
        header[f"t{index}"] = {
            "dtype": dtype,
            "shape": [count],
            "data_offsets": [offset, offset + size],
        }
        offset += size

    parsed = parse(build(header, offset))

    assert {info.dtype for info in parsed.tensors.values()} == set(DTYPE_BITS)


# Bounded so the fuzz tests take seconds: they run in every test run.
FUZZ = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@FUZZ
@given(st.binary(max_size=512), st.integers(min_value=0, max_value=1024))
def test_fuzz_arbitrary_bytes(data: bytes, extra_size: int) -> None:
    with contextlib.suppress(InvalidAdapter):
        parse_header(data, file_size=len(data) + extra_size, max_header_bytes=LIMIT, filename=NAME)


@FUZZ
@given(st.data())
def test_fuzz_mutated_valid_file(valid_file: bytes, data: st.DataObject) -> None:
    mutated = bytearray(valid_file)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(mutated) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        if action == "flip":
            mutated[position] = data.draw(st.integers(min_value=0, max_value=255))
        elif action == "delete":
            del mutated[position]
        elif action == "insert":
            mutated.insert(position, data.draw(st.integers(min_value=0, max_value=255)))
        else:
            del mutated[position:]
        if not mutated:
            break
    with contextlib.suppress(InvalidAdapter):
        parse(bytes(mutated))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
TENSOR_ENTRIES = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from([*DTYPE_BITS, "F128", 7]),
        "shape": st.lists(st.integers(min_value=-2, max_value=2**65), max_size=4) | JSON_VALUES,
        "data_offsets": st.lists(st.integers(min_value=-2, max_value=64), max_size=3) | JSON_VALUES,
    }
)


@FUZZ
@given(
    st.dictionaries(st.text(max_size=10), TENSOR_ENTRIES | JSON_VALUES, max_size=5),
    st.integers(min_value=0, max_value=128),
)
def test_fuzz_structured_headers(header: dict[str, object], data_size: int) -> None:
    try:
        raw = json.dumps(header, allow_nan=True).encode()
    except ValueError:
        return
    data = struct.pack("<Q", len(raw)) + raw + bytes(data_size)
    with contextlib.suppress(InvalidAdapter):
        parse(data)
