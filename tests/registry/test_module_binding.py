"""Binding adapter module paths to base manifest modules by dotted suffix."""

from __future__ import annotations

import pytest

from registry.errors import InvalidAdapter
from registry.module_binding import BaseModules


def manifest(*names: str) -> dict[str, dict[str, object]]:
    return {name: {"shape": [4, 4], "dtype": "F32"} for name in names}


def test_bind_exact_name() -> None:
    base = BaseModules(manifest("model.layers.0.q_proj.weight", "model.layers.1.q_proj.weight"))

    binding = base.bind("model.layers.1.q_proj", filename="a")

    assert binding is not None
    assert binding.base_module == "model.layers.1.q_proj"
    assert binding.adapter_prefix == ""
    assert binding.base_prefix == ""


def test_bind_base_without_model_prefix() -> None:
    base = BaseModules(manifest("encoder.layer.0.query.weight", "encoder.layer.1.query.weight"))

    binding = base.bind("bert.encoder.layer.1.query", filename="a")

    assert binding is not None
    assert binding.base_module == "encoder.layer.1.query"
    assert binding.adapter_prefix == "bert."
    assert binding.adapter_path_of("encoder.layer.0.query") == "bert.encoder.layer.0.query"


def test_bind_base_with_extra_prefix() -> None:
    base = BaseModules(manifest("language_model.model.layers.0.q_proj.weight"))

    binding = base.bind("model.language_model.layers.0.q_proj", filename="a")

    assert binding is not None
    assert binding.base_module == "language_model.model.layers.0.q_proj"
    assert binding.adapter_prefix == "model.language_model."
    assert binding.base_prefix == "language_model.model."


def test_bind_never_crosses_layers() -> None:
    base = BaseModules(manifest("model.layers.5.q_proj.weight"))

    assert base.bind("model.layers.0.q_proj", filename="a") is None


def test_bind_missing_module() -> None:
    base = BaseModules(manifest("model.layers.0.q_proj.weight"))

    assert base.bind("model.layers.0.qkv_proj", filename="a") is None


def test_bind_ambiguous_rejected() -> None:
    base = BaseModules(manifest("encoder.proj.weight", "decoder.proj.weight"))

    with pytest.raises(InvalidAdapter) as caught:
        base.bind("model.proj", filename="adapter_model.safetensors")

    assert "'model.proj'" in caught.value.detail
    assert "['decoder.proj', 'encoder.proj']" in caught.value.detail


def test_siblings_differ_only_in_numbers() -> None:
    base = BaseModules(
        manifest(
            "layers.0.experts.0.w1.weight",
            "layers.0.experts.1.w1.weight",
            "layers.1.experts.0.w1.weight",
            "layers.0.gate.weight",
        )
    )

    assert sorted(base.siblings("layers.1.experts.0.w1")) == [
        "layers.0.experts.0.w1",
        "layers.0.experts.1.w1",
        "layers.1.experts.0.w1",
    ]
