"""Method options: validation messages, defaults and the PEFT configs they build."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

from registry.errors import InvalidInput
from trainer.methods import (
    DEFAULT_ALPHA,
    DEFAULT_R,
    DEFAULT_VIRTUAL_TOKENS,
    MethodOptions,
    build_peft_config,
    check_quantization_supported,
    validate_method_options,
)


def _error(options: MethodOptions, *, task: str = "seq-cls") -> str:
    with pytest.raises(InvalidInput) as raised:
        validate_method_options(options, task=task)
    return raised.value.detail


def test_validate_lora_fills_defaults() -> None:
    options = validate_method_options(MethodOptions(method="lora"), task="seq-cls")

    assert options.r == DEFAULT_R
    assert options.alpha == DEFAULT_ALPHA
    assert options.dropout is not None


def test_validate_prompt_tuning_fills_virtual_tokens() -> None:
    options = validate_method_options(MethodOptions(method="prompt-tuning"), task="causal-lm")

    assert options.num_virtual_tokens == DEFAULT_VIRTUAL_TOKENS
    assert options.r is None


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (MethodOptions(method="qlora"), "--method 'qlora' is not supported"),
        (MethodOptions(r=0), "--r must be a whole number >= 1, got 0"),
        (MethodOptions(alpha=-1), "--alpha must be a number > 0, got -1"),
        (MethodOptions(dropout=1.0), "--dropout must be a probability in [0, 1), got 1.0"),
        (MethodOptions(target_modules=()), "--target-modules needs one or more"),
        (MethodOptions(target_modules=("query", " ")), "--target-modules needs one or more"),
        (MethodOptions(target_modules="query"), "'all-linear' or a list"),
        (MethodOptions(rank_pattern={"query": 0}), "rank_pattern['query'] must be"),
        (MethodOptions(quantize="8bit"), "--quantize '8bit' is not supported; use 4bit"),
        (MethodOptions(method="ia3", r=4), "--r does not apply to method 'ia3'"),
        (MethodOptions(method="lora", num_virtual_tokens=5), "--num-virtual-tokens does not"),
        (MethodOptions(method="prompt-tuning", target_modules=("q",)), "--target-modules does"),
        (MethodOptions(method="prefix-tuning", num_virtual_tokens=0), "--num-virtual-tokens"),
        (MethodOptions(method="ia3", quantize="4bit"), "--quantize does not apply"),
    ],
)
def test_validate_rejects_option(options: MethodOptions, expected: str) -> None:
    assert expected in _error(options)


def test_validate_names_accepted_methods() -> None:
    detail = _error(MethodOptions(method="adalora"))

    for method in ("lora", "dora", "ia3", "prompt-tuning", "prefix-tuning"):
        assert method in detail


def test_validate_rejects_unknown_task() -> None:
    assert "--task 'seq2seq' is not supported" in _error(MethodOptions(), task="seq2seq")


def test_build_lora_config_fields() -> None:
    options = validate_method_options(
        MethodOptions(
            r=4, alpha=8, dropout=0.0, target_modules=("query", "value"), rank_pattern={"value": 2}
        ),
        task="seq-cls",
    )

    config = build_peft_config(options, task="seq-cls", modules_to_save=["pooler"])

    assert isinstance(config, LoraConfig)
    assert config.r == 4
    assert config.lora_alpha == 8
    assert isinstance(config.lora_alpha, int)
    assert config.target_modules == {"query", "value"}
    assert config.rank_pattern == {"value": 2}
    assert config.use_dora is False
    assert config.task_type == TaskType.SEQ_CLS
    assert config.modules_to_save is not None and "pooler" in config.modules_to_save


def test_build_dora_config_sets_use_dora() -> None:
    options = validate_method_options(MethodOptions(method="dora"), task="causal-lm")

    config = build_peft_config(options, task="causal-lm")

    assert isinstance(config, LoraConfig)
    assert config.use_dora is True
    assert config.task_type == TaskType.CAUSAL_LM


@pytest.mark.parametrize(
    ("method", "config_class"),
    [
        ("ia3", IA3Config),
        ("prompt-tuning", PromptTuningConfig),
        ("prefix-tuning", PrefixTuningConfig),
    ],
)
def test_build_config_class_per_method(method: str, config_class: type) -> None:
    options = validate_method_options(MethodOptions(method=method), task="causal-lm")

    assert isinstance(build_peft_config(options, task="causal-lm"), config_class)


def test_build_virtual_token_count() -> None:
    options = validate_method_options(
        MethodOptions(method="prefix-tuning", num_virtual_tokens=7), task="causal-lm"
    )

    config = build_peft_config(options, task="causal-lm")

    assert isinstance(config, PrefixTuningConfig)
    assert config.num_virtual_tokens == 7


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is not None and torch.cuda.is_available(),
    reason="this machine supports 4-bit loading",
)
def test_quantize_unsupported_machine_clear_error() -> None:
    options = validate_method_options(MethodOptions(quantize="4bit"), task="causal-lm")

    with pytest.raises(InvalidInput) as raised:
        check_quantization_supported(options)

    assert "--quantize 4bit needs" in raised.value.detail
    assert "bitsandbytes" in raised.value.detail or "CUDA" in raised.value.detail


def test_quantize_absent_passes_check() -> None:
    check_quantization_supported(MethodOptions())
