"""Expected shapes of the tensors PEFT saves for one adapted module (LoRA, DoRA, AdaLoRA, IA3).

Shapes follow the layer classes of peft 0.21 (``tuners/lora/layer.py``,
``tuners/adalora/layer.py``, ``tuners/ia3/layer.py``) for ``nn.Linear``,
transformers' ``Conv1D`` (``fan_in_fan_out``), ``nn.Embedding`` and
``nn.Conv1d/2d/3d``. A Linear weight is ``[out_features, in_features]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from registry.errors import InvalidAdapter
from registry.module_binding import Binding
from registry.safetensors_format import TensorInfo

# Tensor name suffix -> part of an adapted module, per PEFT method.
LORA_PARTS = {
    ".lora_A.weight": "lora_A",
    ".lora_B.weight": "lora_B",
    ".lora_B.bias": "lora_B.bias",
    ".lora_embedding_A": "lora_embedding_A",
    ".lora_embedding_B": "lora_embedding_B",
    ".lora_magnitude_vector": "lora_magnitude_vector",
    ".base_layer.bias": "base_layer.bias",
}
ADALORA_PARTS = {
    ".lora_A": "lora_A",
    ".lora_B": "lora_B",
    ".lora_E": "lora_E",
    ".base_layer.bias": "base_layer.bias",
}
IA3_PARTS = {".ia3_l": "ia3_l"}
PARTS_BY_TYPE = {"LORA": LORA_PARTS, "ADALORA": ADALORA_PARTS, "IA3": IA3_PARTS}

FLOAT_DTYPES = frozenset(
    {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}
)
CONV_WEIGHT_DIMS = (3, 4, 5)

# One expected dimension: (label for messages, size).
Dim = tuple[str, int]


@dataclass(frozen=True)
class Part:
    tensor_name: str
    info: TensorInfo


def split_adapter_part(key: str, parts: Mapping[str, str]) -> tuple[str, str] | None:
    """Return ``(module path, part)`` when ``key`` ends with an adapter suffix of ``parts``."""
    for suffix, part in parts.items():
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], part
    return None


def _render(dims: list[Dim]) -> str:
    return "[" + ", ".join(f"{label}={size}" if label else str(size) for label, size in dims) + "]"


def _features(binding: Binding, *, fan_in_fan_out: bool) -> tuple[int, int]:
    """Return ``(in_features, out_features)`` of a bound 2-D weight."""
    weight = _weight(binding, ndims=(2,))
    return (weight[0], weight[1]) if fan_in_fan_out else (weight[1], weight[0])


def _weight(binding: Binding, *, ndims: tuple[int, ...]) -> tuple[int, ...]:
    weight = binding.weight_shape
    if weight is None or len(weight) not in ndims:
        found = "no weight" if weight is None else f"weight shape {list(weight)}"
        raise InvalidAdapter(
            f"module {binding.adapter_module!r} binds to base module {binding.base_module!r}, "
            f"which has {found}; expected a weight with {' or '.join(map(str, ndims))} dimensions"
        )
    return weight


class ModuleShapeCheck:
    """Compare the saved parts of one adapted module against its bound base module."""

    def __init__(
        self, config: Mapping[str, Any], binding: Binding, parts: dict[str, Part], *, filename: str
    ) -> None:
        self.config = config
        self.binding = binding
        self.parts = parts
        self.filename = filename

    def expect(self, part: str, dims: list[Dim], *, reason: str) -> None:
        found = self.parts.get(part)
        module = self.binding.adapter_module
        if found is None:
            raise InvalidAdapter(
                f"module {module!r} in {self.filename!r} has no {part} tensor; "
                f"expected shape {_render(dims)} ({reason})"
            )
        expected = tuple(size for _, size in dims)
        if found.info.shape != expected:
            raise InvalidAdapter(
                f"tensor {found.tensor_name!r} in {self.filename!r}: {part} of module {module!r} "
                f"must have shape {_render(dims)} ({reason}), found {list(found.info.shape)}"
            )
        if found.info.dtype not in FLOAT_DTYPES:
            raise InvalidAdapter(
                f"tensor {found.tensor_name!r} in {self.filename!r} has dtype {found.info.dtype}; "
                f"expected a floating-point dtype ({', '.join(sorted(FLOAT_DTYPES))})"
            )

    def reject_extra(self, allowed: set[str], *, reason: str) -> None:
        extra = sorted(set(self.parts) - allowed)
        if extra:
            part = extra[0]
            raise InvalidAdapter(
                f"tensor {self.parts[part].tensor_name!r} in {self.filename!r} is a {part} "
                f"tensor, which this module cannot have: {reason}"
            )

    def base_description(self) -> str:
        weight = self.binding.weight_shape
        shape = list(weight) if weight is not None else None
        return f"base {self.binding.base_module + '.weight'!r} {shape}"

    def check_base_bias(self, allowed: set[str]) -> None:
        """Accept ``base_layer.bias`` when the config saves biases and the base has one."""
        if "base_layer.bias" not in self.parts:
            return
        bias = self.binding.params.get("bias")
        setting = self.config.get("bias", "none")
        if setting == "none" or bias is None:
            raise InvalidAdapter(
                f"tensor {self.parts['base_layer.bias'].tensor_name!r} in {self.filename!r} is a "
                f"bias of the base layer, but the config has bias={setting!r} and base module "
                f"{self.binding.base_module!r} has {'a' if bias else 'no'} bias"
            )
        dims = [("", size) for size in bias]
        self.expect("base_layer.bias", dims, reason=f"base {self.binding.base_module}.bias")
        allowed.add("base_layer.bias")


def check_lora_module(check: ModuleShapeCheck, *, r: int, rank_source: str) -> None:
    """Check lora_A/lora_B (or the embedding pair), DoRA magnitude and LoRA bias."""
    config, rank_reason = check.config, f"r={r} from {rank_source}"
    use_dora = bool(config.get("use_dora", False))
    lora_bias = bool(config.get("lora_bias", False))
    if "lora_embedding_A" in check.parts or "lora_embedding_B" in check.parts:
        allowed = _check_lora_embedding(check, r=r, rank_reason=rank_reason, use_dora=use_dora)
    else:
        weight = _weight(check.binding, ndims=(2, *CONV_WEIGHT_DIMS))
        if len(weight) == 2:
            allowed = _check_lora_linear(check, r=r, rank_reason=rank_reason, use_dora=use_dora)
        else:
            allowed = _check_lora_conv(check, r=r, rank_reason=rank_reason, use_dora=use_dora)
    if lora_bias and "lora_B" in allowed:
        out_features = check.parts["lora_B"].info.shape[0]
        check.expect("lora_B.bias", [("out_features", out_features)], reason="lora_bias=true")
        allowed.add("lora_B.bias")
    check.check_base_bias(allowed)
    check.reject_extra(
        allowed, reason=f"use_dora={str(use_dora).lower()}, lora_bias={str(lora_bias).lower()}"
    )


def _check_lora_linear(
    check: ModuleShapeCheck, *, r: int, rank_reason: str, use_dora: bool
) -> set[str]:
    fan_in_fan_out = bool(check.config.get("fan_in_fan_out", False))
    in_features, out_features = _features(check.binding, fan_in_fan_out=fan_in_fan_out)
    reason = f"{rank_reason}, {check.base_description()}"
    check.expect("lora_A", [("r", r), ("in_features", in_features)], reason=reason)
    check.expect("lora_B", [("out_features", out_features), ("r", r)], reason=reason)
    if use_dora:
        check.expect("lora_magnitude_vector", [("out_features", out_features)], reason=reason)
        return {"lora_A", "lora_B", "lora_magnitude_vector"}
    return {"lora_A", "lora_B"}


def _check_lora_embedding(
    check: ModuleShapeCheck, *, r: int, rank_reason: str, use_dora: bool
) -> set[str]:
    num_embeddings, dim = _weight(check.binding, ndims=(2,))
    reason = f"{rank_reason}, {check.base_description()}"
    check.expect("lora_embedding_A", [("r", r), ("num_embeddings", num_embeddings)], reason=reason)
    check.expect("lora_embedding_B", [("embedding_dim", dim), ("r", r)], reason=reason)
    if use_dora:
        check.expect("lora_magnitude_vector", [("embedding_dim", dim)], reason=reason)
        return {"lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector"}
    return {"lora_embedding_A", "lora_embedding_B"}


def _check_lora_conv(
    check: ModuleShapeCheck, *, r: int, rank_reason: str, use_dora: bool
) -> set[str]:
    # NOTE: assumes groups=1: the manifest stores in_channels / groups, not groups itself.
    out_channels, in_channels, *kernel = _weight(check.binding, ndims=CONV_WEIGHT_DIMS)
    ones = [("", 1)] * len(kernel)
    reason = f"{rank_reason}, {check.base_description()}"
    kernel_dims = [("kernel", size) for size in kernel]
    check.expect("lora_A", [("r", r), ("in_channels", in_channels), *kernel_dims], reason=reason)
    check.expect("lora_B", [("out_channels", out_channels), ("r", r), *ones], reason=reason)
    if use_dora:
        magnitude = [("", 1), ("out_channels", out_channels), *ones]
        check.expect("lora_magnitude_vector", magnitude, reason=reason)
        return {"lora_A", "lora_B", "lora_magnitude_vector"}
    return {"lora_A", "lora_B"}


def adalora_rank(config: Mapping[str, Any], module: str) -> tuple[int, str]:
    """Return the rank AdaLoRA saved for ``module`` and where that rank comes from.

    After training, AdaLoRA's rank_pattern maps ``<module>.lora_E[.<adapter>]`` to
    a mask of kept ranks, and save_pretrained trims the tensors to that rank.
    """
    for name, mask in (config.get("rank_pattern") or {}).items():
        if name == f"{module}.lora_E" or name.startswith(f"{module}.lora_E."):
            return sum(mask), f"rank_pattern[{name!r}]"
    return int(config["init_r"]), "init_r"


def check_adalora_module(check: ModuleShapeCheck, *, r: int, rank_source: str) -> None:
    """Check AdaLoRA's lora_A, lora_B and lora_E (the singular values)."""
    fan_in_fan_out = bool(check.config.get("fan_in_fan_out", False))
    in_features, out_features = _features(check.binding, fan_in_fan_out=fan_in_fan_out)
    reason = f"r={r} from {rank_source}, {check.base_description()}"
    check.expect("lora_A", [("r", r), ("in_features", in_features)], reason=reason)
    check.expect("lora_B", [("out_features", out_features), ("r", r)], reason=reason)
    check.expect("lora_E", [("r", r), ("", 1)], reason=reason)
    allowed = {"lora_A", "lora_B", "lora_E"}
    check.check_base_bias(allowed)
    check.reject_extra(allowed, reason="AdaLoRA saves lora_A, lora_B and lora_E")


def check_ia3_module(check: ModuleShapeCheck, *, feedforward: bool) -> None:
    """Check the IA3 scaling vector: over inputs for feedforward modules, else over outputs."""
    weight = _weight(check.binding, ndims=(2, *CONV_WEIGHT_DIMS))
    kind = "feedforward" if feedforward else "non-feedforward"
    reason = f"{kind} module per feedforward_modules, {check.base_description()}"
    if len(weight) == 2:
        fan_in_fan_out = bool(check.config.get("fan_in_fan_out", False))
        in_features, out_features = _features(check.binding, fan_in_fan_out=fan_in_fan_out)
        dims = (
            [("", 1), ("in_features", in_features)]
            if feedforward
            else [
                ("out_features", out_features),
                ("", 1),
            ]
        )
    else:
        channels = ("in_channels", weight[1]) if feedforward else ("out_channels", weight[0])
        dims = [("", 1), channels, *[("", 1)] * (len(weight) - 2)]
    check.expect("ia3_l", dims, reason=reason)
    check.reject_extra({"ia3_l"}, reason="IA3 saves one ia3_l vector per module")
