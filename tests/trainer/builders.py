"""Tiny models, tokenizers, datasets and registry records for the trainer tests.

Models are built from configs with random weights and tokenizers from the
``tokenizers`` package, so nothing comes from a hub. Records are built with the
same functions the registry client uses to register base models and datasets.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from registry.base_manifest import read_base_model_dir
from registry.dataset_files import inspect_dataset
from tests.support.models import save_tiny_llama

MAX_HEADER_BYTES = 16 * 1024 * 1024
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
LLAMA_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def _word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A lowercase WordLevel tokenizer over the words of ``texts``, BERT-style specials."""
    words = sorted({word for text in texts for word in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab = {token: index for index, token in enumerate(BERT_SPECIALS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )


def save_tiny_bert(path: Path, texts: list[str], *, seed: int = 0) -> Path:
    """Save a 2-layer BertModel (no head, like MiniLM's checkpoint) and a word tokenizer."""
    tokenizer = _word_tokenizer(texts)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def _char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one id per printable ASCII character, LLaMA specials."""
    characters = sorted(set(string.printable) - set("\t\n\r\x0b\x0c"))
    vocab = {token: index for index, token in enumerate(LLAMA_SPECIALS + characters)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )


def save_char_llama(path: Path, *, seed: int = 0) -> Path:
    """Save the tiny LLaMA of the registry tests with a character tokenizer that fits it."""
    tokenizer = _char_tokenizer()
    save_tiny_llama(
        path,
        seed=seed,
        vocab_size=128,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    tokenizer.save_pretrained(path)
    return path


def base_record(path: Path, *, name: str) -> dict[str, Any]:
    """Return the record the registry stores for a base model registered from ``path``."""
    info = read_base_model_dir(path, max_header_bytes=MAX_HEADER_BYTES)
    return {
        "name": name,
        "source_uri": path.resolve().as_uri(),
        "revision": None,
        "architecture": info.architecture,
        "fingerprint": info.fingerprint,
        "config": info.config,
        "manifest": info.manifest,
        "files": [entry.to_dict() for entry in info.files],
        "uploaded": False,
    }


def dataset_record(path: Path, *, name: str, version: str = "1") -> dict[str, Any]:
    """Return the record the registry stores for a dataset registered from ``path``."""
    return {
        "name": name,
        "version": version,
        "uri": path.resolve().as_uri(),
        "uploaded": False,
        **inspect_dataset(path),
    }


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def directory_bytes(path: Path) -> dict[str, bytes]:
    """Return every file under ``path`` by relative name, for byte-for-byte comparisons."""
    return {
        str(file.relative_to(path)): file.read_bytes()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }
