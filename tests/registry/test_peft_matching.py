"""The registry's copy of PEFT's name matching, checked against peft itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from peft import IA3Config, LoraConfig
from peft.tuners.ia3 import IA3Model
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from registry.errors import InvalidAdapter
from registry.peft_matching import (
    is_feedforward,
    matches_modules_to_save,
    matches_target_modules,
    pattern_key,
)


def saved(config: Any) -> dict[str, Any]:
    """Return the config as adapter_config.json stores it (sets become lists)."""
    return json.loads(json.dumps(config.to_dict(), default=sorted))


@pytest.fixture(scope="module")
def module_names() -> list[str]:
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    bert = BertModel(
        BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    names = [name for name, _ in llama.named_modules() if name]
    return names + [f"bert.{name}" for name, _ in bert.named_modules() if name]


LORA_CONFIGS = [
    {"target_modules": ["q_proj", "v_proj"]},
    {"target_modules": ["query", "dense"]},
    {"target_modules": r".*\.(q|k)_proj"},
    {"target_modules": r"model\.layers\.[02]\..*proj"},
    {"target_modules": ["q_proj", "o_proj"], "layers_to_transform": [0, 2]},
    {"target_modules": ["q_proj"], "layers_to_transform": 1, "layers_pattern": "layers"},
    {"target_modules": ["dense"], "layers_to_transform": [1], "layers_pattern": ["layer"]},
    {"target_modules": ["proj", "mlp.up_proj"]},
    {"target_modules": ["q_proj", "k_proj"], "exclude_modules": ["layers.1.self_attn.k_proj"]},
    {"target_modules": ["dense"], "exclude_modules": r".*attention.*"},
    {"target_modules": ["q_proj", "down_proj"], "modules_to_save": ["mlp"]},
    {"target_modules": ["model.layers.0.self_attn.q_proj", "lm_head"]},
]


@pytest.mark.parametrize("options", LORA_CONFIGS, ids=lambda o: json.dumps(o)[:60])
def test_target_matching_agrees_with_peft(module_names: list[str], options: dict[str, Any]) -> None:
    config = LoraConfig(**options)
    stored = saved(config)

    mismatches = [
        name
        for name in module_names
        if matches_target_modules(stored, name) != bool(check_target_module_exists(config, name))
    ]

    assert mismatches == []


def test_target_matching_matches_something(module_names: list[str]) -> None:
    stored = saved(LoraConfig(target_modules=["q_proj"], layers_to_transform=[1]))

    assert [n for n in module_names if matches_target_modules(stored, n)] == [
        "model.layers.1.self_attn.q_proj"
    ]


@pytest.mark.parametrize(
    "patterns",
    [
        ["layers.1.self_attn.q_proj", "q_proj"],
        ["q_proj", "layers.1.self_attn.q_proj"],
        ["down_proj", r"layers\.[12]\..*"],
        [r".*attention\.self\.(query|key)"],
        ["proj"],
    ],
)
def test_pattern_key_agrees_with_peft(module_names: list[str], patterns: list[str]) -> None:
    for name in module_names:
        expected = get_pattern_key(patterns, name)

        assert pattern_key(patterns, name) == (expected if expected in patterns else None), name


@pytest.mark.parametrize(
    "options",
    [
        {"target_modules": ["k_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
        {"target_modules": ["output.dense", "key"], "feedforward_modules": ["output.dense"]},
        {"target_modules": r".*(k_proj|down_proj)", "feedforward_modules": r".*down_proj"},
    ],
)
def test_feedforward_agrees_with_peft(module_names: list[str], options: dict[str, Any]) -> None:
    config = IA3Config(**options)
    stored = saved(config)

    for name in module_names:
        expected = IA3Model._check_target_module_feedforward(config, name)

        assert is_feedforward(stored, name) == expected, name


def test_modules_to_save_plain_suffix() -> None:
    assert matches_modules_to_save(["classifier"], "classifier")
    assert matches_modules_to_save(["score"], "model.xscore")
    assert not matches_modules_to_save(["classifier"], "classifier.dense")


def test_invalid_pattern_named() -> None:
    with pytest.raises(InvalidAdapter) as caught:
        matches_target_modules({"target_modules": "q_proj("}, "model.q_proj")

    assert "target_modules 'q_proj('" in caught.value.detail
    assert "not a valid regular expression" in caught.value.detail


def test_oversized_pattern_rejected() -> None:
    with pytest.raises(InvalidAdapter) as caught:
        matches_target_modules({"target_modules": "a" * 5000}, "a")

    assert "5000 characters" in caught.value.detail
