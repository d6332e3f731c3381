"""PEFT's rules for matching module names against an adapter config, without peft.

Each function mirrors one helper of peft 0.21 so that the registry decides as
peft would when it loads the adapter: ``matches_target_modules`` follows
``tuners_utils.check_target_module_exists``, ``pattern_key`` follows
``utils.other.get_pattern_key``, ``matches_modules_to_save`` follows
``utils.other._set_trainable`` and ``is_feedforward`` follows
``IA3Model._check_target_module_feedforward``. Module names are relative to
the wrapped model, without PEFT's ``base_model.model.`` prefix.

Patterns come from the uploaded config and run on the server.
NOTE: Python's re has no timeout, so MAX_PATTERN_LENGTH only bounds the size
of a pattern, not its matching time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from registry.errors import InvalidAdapter

CONFIG_FILE = "adapter_config.json"
MAX_PATTERN_LENGTH = 4096


def compile_pattern(pattern: str, *, key: str) -> re.Pattern[str]:
    """Compile a regular expression from the config; raise InvalidAdapter naming ``key``."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidAdapter(
            f"{CONFIG_FILE} {key} is a pattern of {len(pattern)} characters, the limit is "
            f"{MAX_PATTERN_LENGTH}"
        )
    try:
        return re.compile(pattern)
    except re.error as e:
        raise InvalidAdapter(
            f"{CONFIG_FILE} {key} {pattern!r:.200} is not a valid regular expression: {e}"
        ) from None


def _full_match(pattern: str, name: str, *, key: str) -> bool:
    return compile_pattern(pattern, key=key).fullmatch(name) is not None


def _is_excluded(config: Mapping[str, Any], name: str) -> bool:
    exclude = config.get("exclude_modules")
    if not exclude:
        return False
    if isinstance(exclude, str):
        return _full_match(exclude, name, key="exclude_modules")
    return name in exclude or any(name.endswith(f".{item}") for item in exclude)


def _is_saved_whole(config: Mapping[str, Any], name: str) -> bool:
    # PEFT never adapts a module that modules_to_save copies whole, or anything inside it.
    modules = config.get("modules_to_save") or []
    return any(
        compile_pattern(rf"(^|.*\.){item}($|\..*)", key="modules_to_save").match(name)
        for item in modules
    )


def _layer_index(config: Mapping[str, Any], name: str) -> int | None:
    layers_pattern = config.get("layers_pattern")
    if not layers_pattern:
        # The lazy .*? picks the first numbered component, not an expert index further on.
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        patterns = [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern
        match = None
        for pattern in patterns:
            match = compile_pattern(
                rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key="layers_pattern"
            ).match(name)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


def _in_transformed_layers(config: Mapping[str, Any], name: str) -> bool:
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    index = _layer_index(config, name)
    if index is None:
        return False
    return index == layers if isinstance(layers, int) else index in layers


def matches_target_modules(config: Mapping[str, Any], name: str) -> bool:
    """Return whether PEFT adapts module ``name`` under the config's target rules.

    ``target_modules`` as a string is a regular expression that must match the
    whole name. As a list, an entry matches the name itself or a dotted suffix
    of it; ``layers_to_transform`` then restricts suffix matches to the listed
    layer indices. ``exclude_modules`` and ``modules_to_save`` take precedence.
    """
    if _is_excluded(config, name) or _is_saved_whole(config, name):
        return False
    targets = config.get("target_modules")
    if targets is None:
        return False
    if isinstance(targets, str):
        return _full_match(targets, name, key="target_modules")
    if name in targets:
        return True
    if not any(name.endswith(f".{target}") for target in targets):
        return False
    return _in_transformed_layers(config, name)


def pattern_key(patterns: Iterable[str], name: str, *, key: str = "rank_pattern") -> str | None:
    """Return the first rank_pattern or alpha_pattern key that matches ``name``, if any.

    A key matches when it is a regular expression matching the end of the
    name at a component boundary.
    """
    for pattern in patterns:
        if compile_pattern(rf"(.*\.)?({pattern})$", key=key).match(name):
            return pattern
    return None


def matches_modules_to_save(names: Iterable[str], module: str) -> bool:
    """Return whether modules_to_save copies ``module`` whole.

    PEFT compares plain string endings, without a component boundary, so
    ``score`` also matches ``xscore``.
    """
    return any(module.endswith(name) for name in names)


def is_feedforward(config: Mapping[str, Any], name: str) -> bool:
    """Return whether IA3 scales the input (feedforward) rather than the output of ``name``."""
    modules = config.get("feedforward_modules")
    if not modules:
        return False
    if isinstance(modules, str):
        return _full_match(modules, name, key="feedforward_modules")
    return any(name.endswith(item) for item in modules)
