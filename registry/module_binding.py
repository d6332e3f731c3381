"""Bind the module paths of an adapter to the modules of its base model's manifest.

The base manifest names tensors as the base checkpoint stores them, which can
differ from the module paths PEFT writes in the leading components: MiniLM's
checkpoint has ``encoder.layer.0.attention.self.query.weight`` while an
adapter on ``BertForSequenceClassification`` names the module
``bert.encoder.layer.0.attention.self.query``. A path therefore binds to the
base module that shares the longest dotted suffix with it, provided

- exactly one base module shares a suffix of that length (else the binding
  is ambiguous and rejected), and
- neither leading part left outside the shared suffix contains a numbered
  component, so that ``layers.0.q_proj`` never binds to ``layers.5.q_proj``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registry.errors import InvalidAdapter


def _is_numbered(component: str) -> bool:
    return component.isdigit()


def _split_tensor_name(name: str) -> tuple[str, str]:
    module, _, param = name.rpartition(".")
    return module, param


@dataclass(frozen=True)
class Binding:
    """An adapter module path bound to a base module; both share a dotted suffix."""

    adapter_module: str
    base_module: str
    # Parameter name ("weight", "bias") -> shape of the base module's tensors.
    params: dict[str, tuple[int, ...]]
    adapter_prefix: str
    base_prefix: str

    @property
    def weight_shape(self) -> tuple[int, ...] | None:
        return self.params.get("weight")

    def adapter_path_of(self, base_module: str) -> str | None:
        """Return the adapter path that a sibling base module would have, if derivable."""
        if not base_module.startswith(self.base_prefix):
            return None
        return self.adapter_prefix + base_module[len(self.base_prefix) :]


class BaseModules:
    """Index of a base manifest by module name, dotted suffix and layer-free group."""

    def __init__(self, manifest: Mapping[str, Mapping[str, Any]]) -> None:
        self.params: dict[str, dict[str, tuple[int, ...]]] = {}
        for tensor_name, entry in manifest.items():
            module, param = _split_tensor_name(tensor_name)
            self.params.setdefault(module, {})[param] = tuple(entry["shape"])
        self._by_suffix: dict[str, list[str]] = {}
        self._groups: dict[tuple[str, ...], list[str]] = {}
        for module in self.params:
            components = module.split(".")
            for start in range(len(components)):
                suffix = ".".join(components[start:])
                self._by_suffix.setdefault(suffix, []).append(module)
            self._groups.setdefault(self._group_key(module), []).append(module)

    @staticmethod
    def _group_key(module: str) -> tuple[str, ...]:
        return tuple("*" if _is_numbered(c) else c for c in module.split("."))

    def siblings(self, base_module: str) -> list[str]:
        """Return the base modules whose names differ from ``base_module`` only in numbers.

        These are the same module in other layers (or other experts).
        """
        return self._groups.get(self._group_key(base_module), [])

    def bind(self, adapter_module: str, *, filename: str) -> Binding | None:
        """Return the binding of an adapter module path, or None if no base module fits.

        Raises InvalidAdapter when several base modules fit equally well.
        """
        components = adapter_module.split(".")
        for start in range(len(components)):
            adapter_prefix_parts = components[:start]
            if any(_is_numbered(c) for c in adapter_prefix_parts):
                return None
            suffix = ".".join(components[start:])
            candidates = self._by_suffix.get(suffix)
            if not candidates:
                continue
            fitting = [m for m in candidates if self._prefix_is_layer_free(m, suffix)]
            if len(fitting) > 1:
                raise InvalidAdapter(
                    f"module {adapter_module!r} in {filename!r} matches several base modules "
                    f"equally well: {sorted(fitting)[:5]!r}; the base model does not identify "
                    "the module the adapter was trained on"
                )
            if not fitting:
                return None
            base_module = fitting[0]
            return Binding(
                adapter_module=adapter_module,
                base_module=base_module,
                params=self.params[base_module],
                adapter_prefix="".join(f"{c}." for c in adapter_prefix_parts),
                base_prefix=base_module[: len(base_module) - len(suffix)],
            )
        return None

    @staticmethod
    def _prefix_is_layer_free(base_module: str, suffix: str) -> bool:
        prefix = base_module[: len(base_module) - len(suffix)]
        return not any(_is_numbered(c) for c in prefix.split(".") if c)
