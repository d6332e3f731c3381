"""Tiny real models and PEFT adapters built from configs (random weights, no hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

TINY_LLAMA = {
    "vocab_size": 128,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
}


def save_tiny_llama(path: Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Save a LLaMA-architecture causal LM with random weights as safetensors."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, **overrides}))
    model.save_pretrained(path, safe_serialization=True)
    return path


def load_tiny_llama(path: Path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(path)


def save_lora_adapter(
    base_dir: Path,
    out: Path,
    *,
    seed: int = 0,
    r: int = 4,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    **lora: Any,
) -> Path:
    """Wrap the base in LoRA, perturb the weights deterministically and save the adapter."""
    model = load_tiny_llama(base_dir)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=list(target_modules), task_type="CAUSAL_LM", **lora
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def load_adapter(base_dir: Path, adapter_dir: Path) -> PeftModel:
    return PeftModel.from_pretrained(load_tiny_llama(base_dir), adapter_dir)
