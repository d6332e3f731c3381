"""Strict checks of adapter_config.json against the PEFT fields in peft_schema.json.

PEFT itself only warns about keys it does not know and then ignores them, so
an adapter written by a newer PEFT can load with a setting silently dropped.
The registry rejects such keys instead.

A config whose ``peft_version`` is newer than the schema's PEFT is accepted
when every key is a known field. New PEFT features arrive as new fields,
which the unknown-key rule rejects. A changed tensor layout fails the tensor
checks, which bind every tensor to the base model.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from registry.errors import InvalidAdapter

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
SCHEMA_RESOURCE = "peft_schema.json"
REGENERATE_HINT = "regenerate registry/peft_schema.json with scripts/gen_peft_schema.py"

Predicate = Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return _is_int(value) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(item) and item >= 0 for item in value)


def _bool_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, bool) for item in value)


def _optional(predicate: Predicate) -> Predicate:
    return lambda value: value is None or predicate(value)


def _either(*predicates: Predicate) -> Predicate:
    return lambda value: any(predicate(value) for predicate in predicates)


def _mapping_of(values: Predicate) -> Predicate:
    return lambda value: isinstance(value, dict) and all(values(item) for item in value.values())


def _one_of(*choices: object) -> Predicate:
    # Compare types too: in Python True == 1 and False == 0.
    return lambda value: any(type(value) is type(c) and value == c for c in choices)


def _absent(value: Any) -> bool:
    return value is None or value == []


# key -> (predicate, what the predicate accepts). Keys missing from a config take
# PEFT's default, except the ones in REQUIRED_KEYS.
COMMON_RULES: dict[str, tuple[Predicate, str]] = {
    "peft_version": (_optional(_string), "a version string"),
    "base_model_name_or_path": (_optional(_string), "a string or null"),
    "revision": (_optional(_string), "a string or null"),
    "inference_mode": (_boolean, "true or false"),
    "modules_to_save": (_optional(_string_list), "a list of module names or null"),
}
MODULE_RULES: dict[str, tuple[Predicate, str]] = {
    "target_modules": (
        _either(_string, _string_list),
        "a regular expression or a list of module names",
    ),
    "exclude_modules": (
        _optional(_either(_string, _string_list)),
        "a regular expression, a list of module names or null",
    ),
    "fan_in_fan_out": (_boolean, "true or false"),
}
LORA_RULES: dict[str, tuple[Predicate, str]] = {
    **MODULE_RULES,
    "r": (_positive_int, "a positive integer"),
    "lora_alpha": (_number, "a number"),
    "lora_dropout": (_number, "a number"),
    "use_dora": (_boolean, "true or false"),
    "use_rslora": (_boolean, "true or false"),
    "lora_bias": (_boolean, "true or false"),
    "bias": (_one_of("none", "all", "lora_only"), "'none', 'all' or 'lora_only'"),
    "rank_pattern": (_mapping_of(_positive_int), "an object of pattern -> positive integer"),
    "alpha_pattern": (_mapping_of(_number), "an object of pattern -> number"),
    "layers_to_transform": (
        _optional(_either(_is_int, _int_list)),
        "a layer index, a list of layer indices or null",
    ),
    "layers_pattern": (
        _optional(_either(_string, _string_list)),
        "a string, a list of strings or null",
    ),
    "trainable_token_indices": (
        _optional(_either(_int_list, _mapping_of(_int_list))),
        "a list of token indices, an object of module name -> token indices, or null",
    ),
    # These change which tensors exist in ways the shape checks do not model.
    "layer_replication": (_absent, "null (layer replication is not supported)"),
    "target_parameters": (_absent, "null (target_parameters adapters are not supported)"),
}
ADALORA_RULES: dict[str, tuple[Predicate, str]] = {
    **LORA_RULES,
    "init_r": (_positive_int, "a positive integer"),
    "target_r": (_positive_int, "a positive integer"),
    "use_dora": (_one_of(False), "false (AdaLoRA does not support DoRA)"),
    # AdaLoRA's rank_pattern maps module names to masks of kept ranks.
    "rank_pattern": (
        _optional(_mapping_of(_bool_list)),
        "an object of module name -> list of booleans, or null",
    ),
}
IA3_RULES: dict[str, tuple[Predicate, str]] = {
    **MODULE_RULES,
    "feedforward_modules": (
        _optional(_either(_string, _string_list)),
        "a regular expression, a list of module names or null",
    ),
}
PROMPT_RULES: dict[str, tuple[Predicate, str]] = {
    "num_virtual_tokens": (_positive_int, "a positive integer"),
    "token_dim": (_positive_int, "a positive integer"),
    "num_transformer_submodules": (_one_of(1, 2), "1 or 2"),
    "num_layers": (_positive_int, "a positive integer"),
    "num_attention_heads": (_optional(_positive_int), "a positive integer or null"),
}
PREFIX_RULES: dict[str, tuple[Predicate, str]] = {
    **PROMPT_RULES,
    "prefix_projection": (_boolean, "true or false"),
    "encoder_hidden_size": (_optional(_positive_int), "a positive integer or null"),
}

RULES_BY_TYPE: dict[str, dict[str, tuple[Predicate, str]]] = {
    "LORA": LORA_RULES,
    "ADALORA": ADALORA_RULES,
    "IA3": IA3_RULES,
    "PROMPT_TUNING": PROMPT_RULES,
    "P_TUNING": PROMPT_RULES,
    "PREFIX_TUNING": PREFIX_RULES,
}
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "LORA": ("r", "target_modules"),
    "ADALORA": ("init_r", "target_modules"),
    "IA3": ("target_modules",),
    "PROMPT_TUNING": ("num_virtual_tokens", "token_dim", "num_transformer_submodules"),
    "P_TUNING": ("num_virtual_tokens", "token_dim", "num_transformer_submodules"),
    "PREFIX_TUNING": ("num_virtual_tokens", "token_dim", "num_layers"),
}


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """Return the parsed peft_schema.json shipped with the registry."""
    text = resources.files("registry").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def supported_peft_types() -> list[str]:
    return sorted(set(load_schema()["peft_types"]) & set(RULES_BY_TYPE))


def _version_tuple(version: str) -> tuple[int, ...]:
    match = re.match(r"^(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else ()


def check_adapter_config(config: Any) -> dict[str, Any]:
    """Check an adapter config against the PEFT schema and return it as a dict.

    Raises InvalidAdapter naming the key, the value found and what is accepted.
    """
    if not isinstance(config, dict):
        raise InvalidAdapter(f"{CONFIG_FILE} must be a JSON object, found {type(config).__name__}")
    peft_type = _check_peft_type(config)
    _check_known_keys(config, peft_type)
    _check_task_type(config)
    for key in REQUIRED_KEYS[peft_type]:
        if config.get(key) is None:
            raise InvalidAdapter(
                f"{CONFIG_FILE} for {peft_type} needs {key!r}, which is missing or null; "
                "save the adapter with PEFT's save_pretrained()"
            )
    _check_value_types(config, {**COMMON_RULES, **RULES_BY_TYPE[peft_type]})
    if peft_type == "IA3":
        _check_feedforward_subset(config)
    return config


def _check_peft_type(config: Mapping[str, Any]) -> str:
    peft_type = config.get("peft_type")
    supported = supported_peft_types()
    if peft_type not in supported:
        found = "no peft_type" if peft_type is None else f"peft_type {peft_type!r:.80}"
        raise InvalidAdapter(
            f"{CONFIG_FILE} has {found}; supported PEFT types are {', '.join(supported)}"
        )
    return str(peft_type)


def _check_known_keys(config: Mapping[str, Any], peft_type: str) -> None:
    schema = load_schema()
    fields = set(schema["peft_types"][peft_type]["fields"])
    unknown = sorted(set(config) - fields)
    written_by = config.get("peft_version")
    if unknown:
        found = written_by if isinstance(written_by, str) else "version not recorded"
        raise InvalidAdapter(
            f"{CONFIG_FILE} has keys {unknown!r:.300} that are not {peft_type} fields: written by "
            f"a newer PEFT ({found:.40})? this registry knows PEFT {schema['peft_version']} "
            f"fields; remove the keys or {REGENERATE_HINT} after upgrading peft"
        )
    if isinstance(written_by, str) and _version_tuple(written_by) > _version_tuple(
        schema["peft_version"]
    ):
        logger.info(
            "accepting an adapter config from PEFT %s with only fields known to PEFT %s",
            written_by,
            schema["peft_version"],
        )


def _check_task_type(config: Mapping[str, Any]) -> None:
    task_type = config.get("task_type")
    task_types = load_schema()["task_types"]
    if task_type is not None and task_type not in task_types:
        raise InvalidAdapter(
            f"{CONFIG_FILE} has task_type {task_type!r:.80}; expected null or one of "
            f"{', '.join(task_types)}"
        )


def _check_value_types(
    config: Mapping[str, Any], rules: Mapping[str, tuple[Predicate, str]]
) -> None:
    for key, (predicate, expected) in rules.items():
        if key in config and not predicate(config[key]):
            raise InvalidAdapter(
                f"{CONFIG_FILE} key {key!r} must be {expected}, found {config[key]!r:.200}"
            )


def _check_feedforward_subset(config: Mapping[str, Any]) -> None:
    feedforward, targets = config.get("feedforward_modules"), config.get("target_modules")
    if isinstance(feedforward, list) and isinstance(targets, list):
        outside = sorted(set(feedforward) - set(targets))
        if outside:
            raise InvalidAdapter(
                f"{CONFIG_FILE} feedforward_modules {outside!r} are not in target_modules "
                f"{sorted(targets)!r}; IA3 requires feedforward modules to be targets"
            )
