"""Validate an adapter's files, config and tensors against its base model.

The registry never imports peft: the PEFT field names come from
``peft_schema.json`` and the tensor rules mirror peft 0.21's save format.
Every check raises ``InvalidAdapter`` on the first problem, naming the file,
the key or tensor, what was expected and what was found.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from registry.adapter_config import CONFIG_FILE, check_adapter_config
from registry.adapter_shapes import (
    PARTS_BY_TYPE,
    Dim,
    ModuleShapeCheck,
    Part,
    adalora_rank,
    check_adalora_module,
    check_ia3_module,
    check_lora_module,
    split_adapter_part,
)
from registry.errors import InvalidAdapter
from registry.module_binding import BaseModules, Binding
from registry.peft_matching import (
    is_feedforward,
    matches_modules_to_save,
    matches_target_modules,
    pattern_key,
)
from registry.safetensors_format import TensorInfo

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "adapter_model.safetensors"
README_FILE = "README.md"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
ACCEPTED_FILES = (*REQUIRED_FILES, README_FILE)
ACCEPTED_DESCRIPTION = (
    f"accepted files are {CONFIG_FILE}, {WEIGHTS_FILE} and optionally {README_FILE}"
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
MAX_NAME_BYTES = 255

PROMPT_TYPES = frozenset({"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"})
METHOD_NAMES = {
    "LORA": "lora",
    "ADALORA": "adalora",
    "IA3": "ia3",
    "PROMPT_TUNING": "prompt-tuning",
    "P_TUNING": "p-tuning",
    "PREFIX_TUNING": "prefix-tuning",
}
# PEFT's LoRA and IA3 models nest the transformers model as base_model.model; prompt
# learning models keep it as base_model.
MODULE_PREFIX = "base_model.model."
PROMPT_MODULE_PREFIX = "base_model."
PROMPT_TENSOR = "prompt_embeddings"
TRAINABLE_TOKENS_SUFFIX = ".token_adapter.trainable_tokens_delta"
# Heads PEFT's task models add to modules_to_save (PeftModelForSequenceClassification etc.).
TASK_HEADS = {
    "SEQ_CLS": ("classifier", "score"),
    "TOKEN_CLS": ("classifier", "score"),
    "QUESTION_ANS": ("qa_outputs",),
}
# Wrapper components that bias="all" leaks into the names of modules_to_save tensors.
SAVED_MODULE_WRAPPERS = ("modules_to_save.", "original_module.")


@dataclass(frozen=True)
class AdapterSummary:
    peft_type: str
    method: str
    task_type: str | None
    r: int | None
    # Sorted names of the base modules the adapter modifies, as the base manifest names them.
    target_modules: list[str]
    # Total number of elements over all tensors of the adapter file.
    trainable_params: int
    tensor_count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def validate_adapter_files(paths: dict[str, int]) -> None:
    """Check the file set of an adapter version: names and sizes.

    Raises InvalidAdapter for a missing required file or any other file name.
    """
    for name, size in paths.items():
        problem = _file_name_problem(name)
        if problem:
            raise InvalidAdapter(
                f"adapter file {name!r:.300} is rejected: {problem}; {ACCEPTED_DESCRIPTION}"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidAdapter(
                f"adapter file {name!r} has size {size!r}; expected a non-negative integer"
            )
    for required in REQUIRED_FILES:
        if required not in paths:
            raise InvalidAdapter(
                f"adapter files {sorted(paths)!r:.300} lack {required}; {ACCEPTED_DESCRIPTION}"
            )


def _file_name_problem(name: Any) -> str | None:
    if not isinstance(name, str):
        return "a file name must be a string"
    if name in ACCEPTED_FILES:
        return None
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"the name is longer than {MAX_NAME_BYTES} bytes"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "the name contains control characters"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute paths are not allowed"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' is not allowed"
    if "/" in name or "\\" in name:
        return "nested paths are not allowed"
    if name.lower().endswith(PICKLE_SUFFIXES):
        return (
            "pickled weights can run code when loaded; "
            "save with save_pretrained(safe_serialization=True)"
        )
    return "unknown file name"


def validate_adapter(
    config: dict[str, Any],
    tensors: dict[str, TensorInfo],
    *,
    base_manifest: dict[str, dict[str, Any]],
    base_config: dict[str, Any],
    filename: str = WEIGHTS_FILE,
) -> AdapterSummary:
    """Check an adapter config and its tensor headers against the base model.

    ``tensors`` comes from the adapter's safetensors header, ``base_manifest``
    and ``base_config`` from the base model. Adapter module paths bind to base
    modules by their longest unambiguous dotted suffix (see
    ``registry.module_binding``), so ``bert.encoder.layer.0.attention.self.query``
    binds to MiniLM's ``encoder.layer.0.attention.self.query`` and LLaMA's
    ``model.layers.0.self_attn.q_proj`` to itself. Raises InvalidAdapter.
    """
    config = check_adapter_config(config)
    peft_type = config["peft_type"]
    if not tensors:
        raise InvalidAdapter(
            f"{filename!r} has no tensors; expected the weights of a {peft_type} adapter"
        )
    base = BaseModules(base_manifest)
    if peft_type in PROMPT_TYPES:
        _check_prompt_tensors(config, tensors, base, base_config=base_config, filename=filename)
        target_modules: list[str] = []
    else:
        target_modules = _check_module_tensors(config, tensors, base, filename=filename)
    summary = AdapterSummary(
        peft_type=peft_type,
        method="dora" if config.get("use_dora") else METHOD_NAMES[peft_type],
        task_type=config.get("task_type"),
        r=_summary_rank(config),
        target_modules=target_modules,
        trainable_params=sum(math.prod(info.shape) for info in tensors.values()),
        tensor_count=len(tensors),
    )
    logger.debug("validated %s adapter with %d tensors", summary.method, summary.tensor_count)
    return summary


def _summary_rank(config: Mapping[str, Any]) -> int | None:
    if config["peft_type"] == "LORA":
        return int(config["r"])
    if config["peft_type"] == "ADALORA":
        return int(config["init_r"])
    return None


def _saved_module_names(config: Mapping[str, Any]) -> list[str]:
    names = list(config.get("modules_to_save") or [])
    return names + [h for h in TASK_HEADS.get(config.get("task_type") or "", ()) if h not in names]


def _strip_prefix(name: str, prefix: str, *, peft_type: str, filename: str) -> str:
    if not name.startswith(prefix) or len(name) == len(prefix):
        raise InvalidAdapter(
            f"tensor {name!r} in {filename!r} does not start with {prefix!r}, the prefix PEFT's "
            f"save_pretrained writes for {peft_type} adapters"
        )
    return name[len(prefix) :]


def _unexplained(name: str, config: Mapping[str, Any], *, filename: str) -> InvalidAdapter:
    return InvalidAdapter(
        f"tensor {name!r} in {filename!r} is not explained by the {config['peft_type']} config: "
        f"it is neither an adapter weight of a module matching target_modules "
        f"{config.get('target_modules')!r:.200} nor part of modules_to_save "
        f"{_saved_module_names(config)!r:.200}; remove it or fix {CONFIG_FILE}"
    )


def _bind(base: BaseModules, module: str, *, tensor: str, filename: str) -> Binding:
    # NOTE: an lm_head tied to the input embeddings has no tensor in the checkpoint,
    # so adapters that target it are rejected here.
    binding = base.bind(module, filename=filename)
    if binding is None:
        raise InvalidAdapter(
            f"tensor {tensor!r} in {filename!r} adapts module {module!r}, which the base model "
            "does not have: no base tensor name ends with a layer-matching suffix of "
            f"'{module}.weight'; check that the adapter was trained on this base model"
        )
    return binding


class _ModuleAdapterCheck:
    """Sort the tensors of a LoRA, AdaLoRA or IA3 adapter and check each group."""

    def __init__(self, config: Mapping[str, Any], base: BaseModules, *, filename: str) -> None:
        self.config = config
        self.base = base
        self.filename = filename
        self.peft_type: str = config["peft_type"]
        self.saved_modules = _saved_module_names(config)
        self.modules: dict[str, dict[str, Part]] = {}

    def add(self, name: str, info: TensorInfo) -> None:
        key = _strip_prefix(name, MODULE_PREFIX, peft_type=self.peft_type, filename=self.filename)
        split = split_adapter_part(key, PARTS_BY_TYPE[self.peft_type])
        if split is not None:
            module, part = split
            self.modules.setdefault(module, {})[part] = Part(tensor_name=name, info=info)
        elif key.endswith(TRAINABLE_TOKENS_SUFFIX):
            self._check_trainable_tokens(name, key, info)
        elif not _check_saved_module_tensor(
            name, key, info, self.saved_modules, self.base, filename=self.filename
        ) and not self._check_all_bias(name, key, info):
            raise _unexplained(name, self.config, filename=self.filename)

    def _check_all_bias(self, name: str, key: str, info: TensorInfo) -> bool:
        """Accept the bias of any base module when the config has bias='all'."""
        if self.config.get("bias") != "all" or not key.endswith(".bias"):
            return False
        binding = self.base.bind(key.removesuffix(".bias"), filename=self.filename)
        if binding is None or "bias" not in binding.params:
            return False
        _expect_base_shape(name, info, binding, "bias", filename=self.filename)
        return True

    def _check_trainable_tokens(self, name: str, key: str, info: TensorInfo) -> None:
        module = key.removesuffix(TRAINABLE_TOKENS_SUFFIX)
        indices = self.config.get("trainable_token_indices")
        if isinstance(indices, dict):
            matching = [k for k in indices if module.endswith(k)]
            indices = indices[matching[0]] if matching else None
        if not indices:
            raise _unexplained(name, self.config, filename=self.filename)
        binding = _bind(self.base, module, tensor=name, filename=self.filename)
        weight = binding.weight_shape
        if weight is None or len(weight) != 2:
            raise InvalidAdapter(
                f"tensor {name!r} in {self.filename!r} trains tokens of {binding.base_module!r}, "
                f"which is not an embedding (weight {weight!r})"
            )
        if max(indices) >= weight[0]:
            raise InvalidAdapter(
                f"{CONFIG_FILE} trainable_token_indices has index {max(indices)}, out of range "
                f"for {binding.base_module!r} with {weight[0]} embeddings"
            )
        expected = (len(indices), weight[1])
        if info.shape != expected:
            raise InvalidAdapter(
                f"tensor {name!r} in {self.filename!r} must have shape [tokens={expected[0]}, "
                f"embedding_dim={expected[1]}], found {list(info.shape)}"
            )

    def check_modules(self) -> list[Binding]:
        if not self.modules:
            raise InvalidAdapter(
                f"{self.filename!r} has no {self.peft_type} adapter weights; expected tensors "
                f"of modules matching target_modules {self.config.get('target_modules')!r:.200}"
            )
        return [self._check_module(module, parts) for module, parts in sorted(self.modules.items())]

    def _check_module(self, module: str, parts: dict[str, Part]) -> Binding:
        first = min(part.tensor_name for part in parts.values())
        if not matches_target_modules(self.config, module):
            raise InvalidAdapter(
                f"tensor {first!r} in {self.filename!r} adapts module {module!r}, which does not "
                f"match target_modules {self.config.get('target_modules')!r:.200} (or is excluded "
                "by exclude_modules, layers_to_transform or modules_to_save)"
            )
        binding = _bind(self.base, module, tensor=first, filename=self.filename)
        check = ModuleShapeCheck(self.config, binding, parts, filename=self.filename)
        if self.peft_type == "LORA":
            pattern = pattern_key(self.config.get("rank_pattern") or {}, module)
            source = f"rank_pattern[{pattern!r}]" if pattern else "r"
            r = self.config["rank_pattern"][pattern] if pattern else self.config["r"]
            check_lora_module(check, r=r, rank_source=source)
        elif self.peft_type == "ADALORA":
            r, source = adalora_rank(self.config, module)
            check_adalora_module(check, r=r, rank_source=source)
        else:
            check_ia3_module(check, feedforward=is_feedforward(self.config, module))
        return binding

    def check_complete(self, bindings: list[Binding]) -> None:
        """Reject an adapter that lacks a module PEFT would have adapted.

        Only siblings of adapted modules are checked, meaning the same module in
        other layers. A base checkpoint can contain modules that the model class
        drops (heads for other tasks), and PEFT never adapts those.
        NOTE: a checkpoint with extra layers that the model class drops (such
        as multi-token prediction layers) fails this check.
        """
        adapted = {binding.base_module for binding in bindings}
        for binding in bindings:
            for sibling in self.base.siblings(binding.base_module):
                path = binding.adapter_path_of(sibling)
                if sibling in adapted or path is None:
                    continue
                if matches_target_modules(self.config, path):
                    raise InvalidAdapter(
                        f"{self.filename!r} has no tensors for module {path!r} (base "
                        f"{sibling!r}), which matches target_modules "
                        f"{self.config.get('target_modules')!r:.200} like "
                        f"{binding.adapter_module!r}, which has them; the file is incomplete"
                    )


def _check_module_tensors(
    config: Mapping[str, Any],
    tensors: Mapping[str, TensorInfo],
    base: BaseModules,
    *,
    filename: str,
) -> list[str]:
    check = _ModuleAdapterCheck(config, base, filename=filename)
    for name, info in sorted(tensors.items()):
        check.add(name, info)
    bindings = check.check_modules()
    check.check_complete(bindings)
    return sorted({binding.base_module for binding in bindings})


def _expect_base_shape(
    name: str, info: TensorInfo, binding: Binding, param: str, *, filename: str
) -> None:
    expected = binding.params[param]
    if info.shape != expected:
        raise InvalidAdapter(
            f"tensor {name!r} in {filename!r} has shape {list(info.shape)}, but base tensor "
            f"{binding.base_module + '.' + param!r} has {list(expected)}"
        )


def _check_saved_module_tensor(
    name: str,
    key: str,
    info: TensorInfo,
    saved_modules: list[str],
    base: BaseModules,
    *,
    filename: str,
) -> bool:
    """Check a tensor of a module that modules_to_save copies whole.

    Return False if the tensor belongs to no such module. The module may be
    new, like a classification head. If the base has the tensor, the shapes
    must agree because PEFT loads the copy into the base module.
    """
    components = key.split(".")
    for end in range(1, len(components)):
        module = ".".join(components[:end])
        if matches_modules_to_save(saved_modules, module):
            break
    else:
        return False
    inner = key[len(module) + 1 :]
    for wrapper in SAVED_MODULE_WRAPPERS:
        inner = inner.removeprefix(wrapper)
    tensor_module, _, param = f"{module}.{inner}".rpartition(".")
    binding = base.bind(tensor_module, filename=filename)
    if binding is not None and param in binding.params:
        _expect_base_shape(name, info, binding, param, filename=filename)
    return True


def _text_config(base_config: Mapping[str, Any]) -> Mapping[str, Any]:
    # Vision-language models keep the language model's settings in text_config.
    nested = base_config.get("text_config")
    return nested if isinstance(nested, dict) else base_config


def _first_int(config: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _check_prompt_tensors(
    config: Mapping[str, Any],
    tensors: Mapping[str, TensorInfo],
    base: BaseModules,
    *,
    base_config: Mapping[str, Any],
    filename: str,
) -> None:
    saved_modules = _saved_module_names(config)
    for name, info in sorted(tensors.items()):
        if name == PROMPT_TENSOR:
            continue
        key = _strip_prefix(
            name, PROMPT_MODULE_PREFIX, peft_type=config["peft_type"], filename=filename
        )
        if not _check_saved_module_tensor(name, key, info, saved_modules, base, filename=filename):
            raise _unexplained(name, config, filename=filename)
    if PROMPT_TENSOR not in tensors:
        raise InvalidAdapter(
            f"{filename!r} has no {PROMPT_TENSOR!r} tensor; every {config['peft_type']} adapter "
            "saves its virtual token embeddings under that name"
        )
    text_config = _text_config(base_config)
    if config["peft_type"] == "PREFIX_TUNING":
        expected = _prefix_shape(config, text_config)
    else:
        expected = _prompt_shape(config, text_config)
    found = tensors[PROMPT_TENSOR]
    if found.shape != tuple(size for _, size in expected):
        rendered = ", ".join(f"{label}={size}" for label, size in expected)
        raise InvalidAdapter(
            f"tensor {PROMPT_TENSOR!r} in {filename!r} must have shape [{rendered}], "
            f"found {list(found.shape)}"
        )


def _prompt_shape(config: Mapping[str, Any], text_config: Mapping[str, Any]) -> list[Dim]:
    hidden_size = _first_int(text_config, ("hidden_size", "n_embd", "d_model"))
    token_dim = config["token_dim"]
    if hidden_size is not None and token_dim != hidden_size:
        raise InvalidAdapter(
            f"{CONFIG_FILE} token_dim is {token_dim}, but the base model's hidden size is "
            f"{hidden_size}; the adapter was trained on another base model"
        )
    rows = config["num_virtual_tokens"] * config["num_transformer_submodules"]
    return [("num_virtual_tokens*num_transformer_submodules", rows), ("token_dim", token_dim)]


def _prefix_token_dims(text_config: Mapping[str, Any]) -> set[int] | None:
    """Return the token_dim values PEFT can derive for prefix tuning on this base, if known.

    With grouped-query attention PEFT stores the key/value width
    ``head_dim * num_key_value_heads`` instead of the hidden size.
    """
    hidden_size = _first_int(text_config, ("hidden_size", "n_embd", "d_model"))
    if hidden_size is None or "per_layer_config" in text_config:
        # NOTE: models with per-layer attention shapes (Gemma 4) are not cross-checked.
        return None
    dims = {hidden_size}
    heads = _first_int(text_config, ("num_attention_heads", "n_head", "num_heads"))
    kv_heads = _first_int(text_config, ("num_key_value_heads",))
    head_dim = _first_int(text_config, ("head_dim",)) or (hidden_size // heads if heads else None)
    if kv_heads and head_dim:
        dims.add(head_dim * kv_heads)
    global_head_dim = _first_int(text_config, ("global_head_dim",))
    global_kv_heads = _first_int(text_config, ("num_global_key_value_heads",)) or kv_heads
    if global_head_dim and global_kv_heads:
        dims.add(global_head_dim * global_kv_heads)
    return dims


def _prefix_shape(config: Mapping[str, Any], text_config: Mapping[str, Any]) -> list[Dim]:
    num_layers, token_dim = config["num_layers"], config["token_dim"]
    base_layers = _first_int(text_config, ("num_hidden_layers", "num_layers", "n_layer"))
    if base_layers is not None and num_layers != base_layers:
        raise InvalidAdapter(
            f"{CONFIG_FILE} num_layers is {num_layers}, but the base model has {base_layers} "
            "layers; the adapter was trained on another base model"
        )
    dims = _prefix_token_dims(text_config)
    if dims is not None and token_dim not in dims:
        raise InvalidAdapter(
            f"{CONFIG_FILE} token_dim is {token_dim}, but the base model's attention width is "
            f"{' or '.join(map(str, sorted(dims)))}; the adapter was trained on another base model"
        )
    return [
        ("num_virtual_tokens", config["num_virtual_tokens"]),
        ("num_layers*2*token_dim", num_layers * 2 * token_dim),
    ]
