"""PEFT method options: validation before any model is loaded, then the PEFT config.

Each option applies to some methods only, and setting it for another method is
an error rather than silently ignored:

| option              | lora, dora | ia3 | prompt-tuning, prefix-tuning |
|---------------------|------------|-----|------------------------------|
| r, alpha, dropout   | yes        |     |                              |
| rank_pattern, alpha_pattern | yes |    |                              |
| target_modules      | yes        | yes |                              |
| num_virtual_tokens  |            |     | yes                          |
| quantize            | yes        |     |                              |
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import torch
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    TaskType,
)

from registry.errors import InvalidInput

METHODS = ("lora", "dora", "ia3", "prompt-tuning", "prefix-tuning")
TASKS = ("seq-cls", "causal-lm")
QUANTIZE_CHOICES = ("4bit",)
TASK_TYPES = {"seq-cls": TaskType.SEQ_CLS, "causal-lm": TaskType.CAUSAL_LM}

_LORA = ("lora", "dora")
_VIRTUAL_TOKENS = ("prompt-tuning", "prefix-tuning")
# Option -> methods that accept it.
APPLIES_TO: dict[str, tuple[str, ...]] = {
    "r": _LORA,
    "alpha": _LORA,
    "dropout": _LORA,
    "rank_pattern": _LORA,
    "alpha_pattern": _LORA,
    "target_modules": (*_LORA, "ia3"),
    "num_virtual_tokens": _VIRTUAL_TOKENS,
    "quantize": _LORA,
}
DEFAULT_R = 8
DEFAULT_ALPHA = 16
DEFAULT_DROPOUT = 0.05
DEFAULT_VIRTUAL_TOKENS = 20


@dataclass(frozen=True)
class MethodOptions:
    """The PEFT method and its options; None means the method's default or not applicable."""

    method: str = "lora"
    # LoRA rank: the inner dimension of the low-rank update B @ A.
    r: int | None = None
    # LoRA scaling numerator: the update is multiplied by alpha / r.
    alpha: float | None = None
    # Dropout probability on the LoRA input, in [0, 1).
    dropout: float | None = None
    # Module names (suffixes) or regular expression patterns to adapt, or "all-linear";
    # None lets PEFT pick its default for the architecture.
    target_modules: tuple[str, ...] | str | None = None
    # Module name pattern -> rank (or alpha) that overrides r (or alpha) for those modules.
    rank_pattern: dict[str, int] | None = None
    alpha_pattern: dict[str, float] | None = None
    # Length of the learned soft prompt or prefix, in tokens.
    num_virtual_tokens: int | None = None
    # "4bit" loads the base in NF4 through bitsandbytes (QLoRA); needs CUDA.
    quantize: str | None = None

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        if isinstance(self.target_modules, tuple):
            values["target_modules"] = list(self.target_modules)
        return values


def validate_method_options(options: MethodOptions, *, task: str) -> MethodOptions:
    """Check every option and return a copy with the method's defaults filled in.

    Raises InvalidInput naming the option, the value received and the accepted values.
    """
    if task not in TASKS:
        raise InvalidInput(f"--task {task!r} is not supported; use one of {', '.join(TASKS)}")
    if options.method not in METHODS:
        raise InvalidInput(
            f"--method {options.method!r} is not supported; use one of {', '.join(METHODS)}"
        )
    _check_applicable(options)
    _check_lora_options(options)
    _check_target_modules(options.target_modules)
    _check_positive_int("num-virtual-tokens", options.num_virtual_tokens)
    if options.quantize is not None and options.quantize not in QUANTIZE_CHOICES:
        raise InvalidInput(
            f"--quantize {options.quantize!r} is not supported; use {', '.join(QUANTIZE_CHOICES)} "
            "or leave it out"
        )
    return _with_defaults(options)


def _check_applicable(options: MethodOptions) -> None:
    for option, methods in APPLIES_TO.items():
        if getattr(options, option) is not None and options.method not in methods:
            flag = option.replace("_", "-")
            raise InvalidInput(
                f"--{flag} does not apply to method {options.method!r}; it applies to "
                f"{', '.join(methods)}. Remove the option or change --method"
            )


def _check_lora_options(options: MethodOptions) -> None:
    _check_positive_int("r", options.r)
    if options.alpha is not None and not options.alpha > 0:
        raise InvalidInput(f"--alpha must be a number > 0, got {options.alpha!r}")
    if options.dropout is not None and not 0 <= options.dropout < 1:
        raise InvalidInput(f"--dropout must be a probability in [0, 1), got {options.dropout!r}")
    for key, value in (options.rank_pattern or {}).items():
        if not key:
            raise InvalidInput("rank_pattern has an empty module pattern; name the modules")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"rank_pattern[{key!r}] must be a whole number >= 1, got {value!r}")
    for pattern, alpha in (options.alpha_pattern or {}).items():
        if (
            not pattern
            or isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or alpha <= 0
        ):
            raise InvalidInput(
                f"alpha_pattern[{pattern!r}] must be a number > 0 for a non-empty pattern, "
                f"got {alpha!r}"
            )


def _check_positive_int(flag: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"--{flag} must be a whole number >= 1, got {value!r}")


def _check_target_modules(target_modules: tuple[str, ...] | str | None) -> None:
    if target_modules is None or target_modules == "all-linear":
        return
    if isinstance(target_modules, str):
        raise InvalidInput(
            f"--target-modules {target_modules!r} must be 'all-linear' or a list of module names"
        )
    if not target_modules or not all(isinstance(m, str) and m.strip() for m in target_modules):
        raise InvalidInput(
            f"--target-modules needs one or more non-empty module names (comma-separated), "
            f"got {list(target_modules)!r}"
        )


def _with_defaults(options: MethodOptions) -> MethodOptions:
    if options.method in _LORA:
        return replace(
            options,
            r=options.r if options.r is not None else DEFAULT_R,
            alpha=options.alpha if options.alpha is not None else DEFAULT_ALPHA,
            dropout=options.dropout if options.dropout is not None else DEFAULT_DROPOUT,
        )
    if options.method in _VIRTUAL_TOKENS and options.num_virtual_tokens is None:
        return replace(options, num_virtual_tokens=DEFAULT_VIRTUAL_TOKENS)
    return options


def check_quantization_supported(options: MethodOptions) -> None:
    """Raise InvalidInput when ``--quantize`` is set but this machine cannot load 4-bit weights.

    QLoRA needs the bitsandbytes package and a CUDA GPU; both are checked here,
    before any model is loaded.
    """
    if options.quantize is None:
        return
    if importlib.util.find_spec("bitsandbytes") is None:
        raise InvalidInput(
            f"--quantize {options.quantize} needs the bitsandbytes package, which is not "
            "installed; run `pip install bitsandbytes` on a machine with a CUDA GPU, or drop "
            "--quantize"
        )
    if not torch.cuda.is_available():
        raise InvalidInput(
            f"--quantize {options.quantize} needs a CUDA GPU and none is available; train "
            "without --quantize or on a GPU machine"
        )


def quantization_config(options: MethodOptions) -> Any | None:
    """Return the transformers BitsAndBytesConfig for ``--quantize``, or None without it."""
    if options.quantize is None:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def build_peft_config(
    options: MethodOptions, *, task: str, modules_to_save: list[str] | None = None
) -> PeftConfig:
    """Build the PEFT config of validated ``options``; ``modules_to_save`` are trained in full."""
    task_type = TASK_TYPES[task]
    target_modules: list[str] | str | None = (
        list(options.target_modules)
        if isinstance(options.target_modules, tuple)
        else options.target_modules
    )
    if options.method in _LORA:
        return LoraConfig(
            task_type=task_type,
            r=options.r or DEFAULT_R,
            # PEFT annotates lora_alpha as int but computes with any number.
            lora_alpha=cast(int, _plain_number(options.alpha or DEFAULT_ALPHA)),
            lora_dropout=options.dropout if options.dropout is not None else DEFAULT_DROPOUT,
            target_modules=target_modules,
            rank_pattern=dict(options.rank_pattern or {}),
            alpha_pattern={k: _plain_number(v) for k, v in (options.alpha_pattern or {}).items()},
            use_dora=options.method == "dora",
            modules_to_save=modules_to_save,
        )
    if options.method == "ia3":
        return IA3Config(
            task_type=task_type, target_modules=target_modules, modules_to_save=modules_to_save
        )
    virtual_tokens = options.num_virtual_tokens or DEFAULT_VIRTUAL_TOKENS
    if options.method == "prompt-tuning":
        return PromptTuningConfig(
            task_type=task_type, num_virtual_tokens=virtual_tokens, modules_to_save=modules_to_save
        )
    return PrefixTuningConfig(
        task_type=task_type, num_virtual_tokens=virtual_tokens, modules_to_save=modules_to_save
    )


def _plain_number(value: float) -> int | float:
    """Return a whole number as int, so adapter_config.json reads ``16`` and not ``16.0``."""
    return int(value) if float(value).is_integer() else value
