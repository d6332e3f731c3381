"""Evaluate adapter versions, base models and merged models on registered datasets.

Every subject is evaluated on the same examples: ``max_samples`` rows of the split
drawn with a fixed seed (kept in file order), after the file's sha256 was checked
against the record. A seeded draw rather than the first rows, because files are
often sorted by label and their first rows would all share one.
Metrics:

- causal-lm: ``loss`` (mean cross-entropy per predicted token) and
  ``perplexity`` (exp of that loss), for adapters and the bare base model alike;
- seq-cls: ``accuracy``, ``macro_f1`` (unweighted mean of per-label F1 over the
  labels that occur in the gold or predicted labels) and ``loss`` (mean
  cross-entropy per example).

What "the base model" means for seq-cls: the base checkpoint has no trained
classification head, and a freshly initialised head would only measure random
weights. The base model is therefore evaluated as a zero-shot classifier
(baseline ``zero-shot-label-embedding``): each text and each label name is
embedded with the base encoder (mean of the last hidden states over real
tokens), and the label with the highest cosine similarity is the prediction.
It reports accuracy and macro_f1 but no loss, because cosine similarities are
not calibrated probabilities. It is a real, weak baseline: an adapter that
falls below it has learnt less than the label names already say.
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModel, AutoTokenizer

from registry.errors import InvalidInput
from trainer.data import (
    Example,
    collate,
    encode_causal_lm,
    encode_classification,
    label_names,
    locate_dataset_file,
    parse_dataset_ref,
    read_split,
    record_digest,
    verify_dataset_file,
)
from trainer.models import cache_home, load_base_model, locate_base_model, verify_base_model
from trainer.validation import evaluate_examples

log = logging.getLogger(__name__)

ZERO_SHOT_BASELINE = "zero-shot-label-embedding"
BASELINE_METRICS = {"seq-cls": ["accuracy", "macro_f1"], "causal-lm": ["loss", "perplexity"]}
# peft's task_type of a version -> the trainer's task name.
TASKS_BY_PEFT_TYPE = {"SEQ_CLS": "seq-cls", "CAUSAL_LM": "causal-lm"}


@dataclass(frozen=True)
class EvalSettings:
    """Settings shared by every subject of one evaluation."""

    split: str = "test"
    # Rows of the split evaluated, drawn with sample_seed; None for all of them.
    max_samples: int | None = 500
    sample_seed: int = 0
    # Tokens per example after truncation.
    max_length: int = 128
    # Examples per forward pass; does not change the numbers.
    batch_size: int = 32

    def key(self) -> dict[str, Any]:
        """Return the settings that change the numbers; each evaluation stores them."""
        return {
            "max_length": self.max_length,
            "max_samples": self.max_samples,
            "sample_seed": self.sample_seed,
        }


@dataclass
class EvalData:
    """One dataset split, read once and verified against its registry record."""

    ref: str
    record: dict[str, Any]
    rows: list[dict[str, Any]]
    digest: str
    labels: list[str] | None = field(default=None)


def sample_rows(rows: list[dict[str, Any]], count: int, *, seed: int) -> list[dict[str, Any]]:
    """Return ``count`` rows drawn with ``seed``, in their file order; all rows if fewer."""
    if len(rows) <= count:
        return rows
    picked = sorted(random.Random(seed).sample(range(len(rows)), count))
    return [rows[index] for index in picked]


def task_of(version: dict[str, Any]) -> str:
    """Return the trainer task ("seq-cls", "causal-lm") of a version record."""
    task = TASKS_BY_PEFT_TYPE.get(str(version.get("task_type")))
    if task is None:
        raise InvalidInput(
            f"{version.get('ref')} has task type {version.get('task_type')!r}; evaluation "
            f"supports {', '.join(TASKS_BY_PEFT_TYPE)}"
        )
    return task


class Evaluator:
    """Evaluates subjects for one client, reading each dataset and base model once."""

    def __init__(
        self, client: Any, settings: EvalSettings, *, cache_dir: Path | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.cache_dir = cache_dir or cache_home()
        self._data: dict[str, EvalData] = {}
        self._base_dirs: dict[str, Path] = {}

    def dataset(self, ref: str) -> EvalData:
        """Return the verified rows of ``ref``'s split, truncated to max_samples."""
        if ref not in self._data:
            name, version = parse_dataset_ref(ref)
            record = self.client.get_dataset(name, version)
            path = locate_dataset_file(record, client=self.client, cache_dir=self.cache_dir)
            verify_dataset_file(path, record)
            rows = read_split(path, record, split=self.settings.split)
            if self.settings.max_samples is not None:
                rows = sample_rows(rows, self.settings.max_samples, seed=self.settings.sample_seed)
            labels = label_names(record) if record.get("label_set") else None
            self._data[ref] = EvalData(
                ref=ref, record=record, rows=rows, digest=record_digest(record), labels=labels
            )
        return self._data[ref]

    def base_dir(self, name: str) -> Path:
        """Return the verified local directory of base model ``name``."""
        if name not in self._base_dirs:
            record = self.client.get_base_model(name)
            directory = locate_base_model(record, client=self.client, cache_dir=self.cache_dir)
            verify_base_model(directory, record)
            self._base_dirs[name] = directory
        return self._base_dirs[name]

    def evaluate_version(
        self, version: dict[str, Any], data: EvalData, *, promotion_request_id: int | None = None
    ) -> dict[str, Any]:
        """Run an adapter version on ``data`` and record the evaluation; return the record."""
        task = task_of(version)
        directory = self.base_dir(version["base_model"]["name"])
        with pulled_adapter(self.client, version["ref"]) as adapter_dir:
            loaded = load_base_model(directory, task=task, labels=_labels_for(task, data))
            model = PeftModel.from_pretrained(loaded.model, adapter_dir)
            metrics = self._run(model, loaded.tokenizer, task, data)
        return self._record(
            {"type": "adapter_version", "ref": version["ref"]},
            task,
            data,
            metrics,
            promotion_request_id=promotion_request_id,
        )

    def evaluate_base(
        self, name: str, task: str, data: EvalData, *, promotion_request_id: int | None = None
    ) -> tuple[dict[str, Any], bool]:
        """Return the base model's evaluation on ``data`` and whether it came from the cache."""
        baseline = ZERO_SHOT_BASELINE if task == "seq-cls" else None
        cached = self.client.find_cached_evaluation(
            base_model=name,
            dataset=data.ref,
            split=self.settings.split,
            metrics=BASELINE_METRICS[task],
            baseline=baseline,
            settings=self.settings.key(),
        )
        if cached is not None:
            log.info("base model %s on %s: cached evaluation %s", name, data.ref, cached["id"])
            return cached, True
        directory = self.base_dir(name)
        if task == "seq-cls":
            metrics = zero_shot_metrics(directory, data, settings=self.settings)
        else:
            loaded = load_base_model(directory, task=task)
            metrics = self._run(loaded.model, loaded.tokenizer, task, data)
        record = self._record(
            {"type": "base_model", "ref": name},
            task,
            data,
            metrics,
            baseline=baseline,
            promotion_request_id=promotion_request_id,
        )
        return record, False

    def evaluate_merged(self, name: str, task: str, data: EvalData) -> dict[str, Any]:
        """Run a registered merged model from its output directory and record the evaluation."""
        record = self.client.get_merged_model(name)
        directory = Path(str(record["details"].get("path", "")))
        if not (directory / "config.json").is_file():
            raise InvalidInput(
                f"merged model {name!r} has no files at {str(directory)!r}; evaluate it on the "
                "machine that ran the merge"
            )
        loaded = load_base_model(directory, task=task, labels=_labels_for(task, data))
        metrics = self._run(loaded.model, loaded.tokenizer, task, data)
        return self._record({"type": "merged_model", "ref": name}, task, data, metrics)

    def _run(self, model: Any, tokenizer: Any, task: str, data: EvalData) -> dict[str, float]:
        examples = encode_examples(data, tokenizer, task=task, max_length=self.settings.max_length)
        pad = tokenizer.pad_token_id
        device = eval_device()
        model.to(device)
        if task == "seq-cls":
            return classification_metrics(
                model,
                examples,
                batch_size=self.settings.batch_size,
                pad_token_id=pad,
                device=device,
            )
        return evaluate_examples(
            model,
            examples,
            task=task,
            batch_size=self.settings.batch_size,
            pad_token_id=pad,
            device=device,
        )

    def _record(
        self,
        subject: dict[str, str],
        task: str,
        data: EvalData,
        metrics: dict[str, float],
        *,
        baseline: str | None = None,
        promotion_request_id: int | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.client.record_evaluation(
            {
                "subject": subject,
                "dataset": data.ref,
                "dataset_digest": data.digest,
                "split": self.settings.split,
                "task": task,
                "metrics": metrics,
                "sample_count": len(data.rows),
                "baseline": baseline,
                "settings": self.settings.key(),
                "promotion_request_id": promotion_request_id,
            }
        )
        log.info("evaluation %s of %s on %s: %s", result["id"], subject["ref"], data.ref, metrics)
        return result


def eval_device() -> torch.device:
    """Return the first CUDA device when there is one, else the CPU."""
    # NOTE: the tests run on CPU only; the CUDA path is the standard .to(device).
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _labels_for(task: str, data: EvalData) -> list[str] | None:
    if task != "seq-cls":
        return None
    if not data.labels:
        raise InvalidInput(f"dataset {data.ref} has no label set, so seq-cls cannot be evaluated")
    return data.labels


@contextmanager
def pulled_adapter(client: Any, ref: str) -> Iterator[Path]:
    """Download a version into a temporary directory that is removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="adapterreg-eval-"))
    try:
        client.pull(ref, root / "adapter")
        yield root / "adapter"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def encode_examples(data: EvalData, tokenizer: Any, *, task: str, max_length: int) -> list[Example]:
    if task == "seq-cls":
        return encode_classification(
            data.rows, tokenizer, labels=_labels_for(task, data) or [], max_length=max_length
        )
    return encode_causal_lm(data.rows, tokenizer, max_length=max_length)


@torch.no_grad()
def classification_metrics(
    model: Any,
    examples: list[Example],
    *,
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
) -> dict[str, float]:
    """Return accuracy, macro_f1 and loss (mean cross-entropy per example) of a classifier."""
    model.eval()
    loss_sum = 0.0
    predictions: list[int] = []
    gold: list[int] = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_token_id=pad_token_id)
        batch = {key: value.to(device) for key, value in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss_sum += float(
            torch.nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="sum")
        )
        predictions += logits.argmax(dim=-1).tolist()
        gold += batch["labels"].tolist()
    return {**label_metrics(predictions, gold), "loss": loss_sum / len(gold)}


def label_metrics(predictions: list[int], gold: list[int]) -> dict[str, float]:
    """Return accuracy and macro-F1 over the labels present in ``gold`` or ``predictions``."""
    if not gold or len(predictions) != len(gold):
        raise InvalidInput(
            f"need as many predictions as gold labels, got {len(predictions)} and {len(gold)}"
        )
    correct = sum(p == g for p, g in zip(predictions, gold, strict=True))
    scores = []
    for label in sorted(set(gold) | set(predictions)):
        true_positive = sum(p == g == label for p, g in zip(predictions, gold, strict=True))
        predicted = predictions.count(label)
        actual = gold.count(label)
        denominator = predicted + actual
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return {"accuracy": correct / len(gold), "macro_f1": sum(scores) / len(scores)}


@torch.no_grad()
def zero_shot_metrics(
    directory: Path, data: EvalData, *, settings: EvalSettings
) -> dict[str, float]:
    """Classify by cosine similarity between text and label-name embeddings of the base."""
    labels = _labels_for("seq-cls", data) or []
    tokenizer = AutoTokenizer.from_pretrained(directory)
    # Encoding checks every row's text and label the way the adapter's evaluation does.
    examples = encode_classification(
        data.rows, tokenizer, labels=labels, max_length=settings.max_length
    )
    gold = [example.labels for example in examples if isinstance(example.labels, int)]
    encoder = AutoModel.from_pretrained(directory).to(eval_device()).eval()
    label_vectors = _embed(encoder, tokenizer, labels, settings=settings)
    texts = [str(row["text"]) for row in data.rows]
    text_vectors = _embed(encoder, tokenizer, texts, settings=settings)
    similarity = text_vectors @ label_vectors.T
    predictions = similarity.argmax(dim=-1).tolist()
    return label_metrics(predictions, gold)


def _embed(
    encoder: Any, tokenizer: Any, texts: list[str], *, settings: EvalSettings
) -> torch.Tensor:
    """Return L2-normalised mean-pooled last hidden states, one row per text."""
    vectors = []
    for start in range(0, len(texts), settings.batch_size):
        batch = tokenizer(
            texts[start : start + settings.batch_size],
            padding=True,
            truncation=True,
            max_length=settings.max_length,
            return_tensors="pt",
        ).to(eval_device())
        hidden = encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        vectors.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
    return torch.cat(vectors)


@dataclass(frozen=True)
class EvaluationReport:
    """Result of `adapterreg evaluate`: both evaluations and how the base was run."""

    adapter: dict[str, Any]
    base: dict[str, Any]
    base_cached: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "base": self.base,
            "base_cached": self.base_cached,
            "baseline": self.base.get("baseline"),
        }


def evaluate_adapter(
    client: Any, ref: str, dataset: str, *, settings: EvalSettings
) -> EvaluationReport:
    """Evaluate version ``ref`` and its bare base model on ``dataset`` and record both.

    Raises NotFound for an unknown version or dataset, IntegrityError when the
    dataset or base model files differ from their records, InvalidInput for a
    missing split or an unsupported task.
    """
    version = client.get_version(ref)
    evaluator = Evaluator(client, settings)
    data = evaluator.dataset(dataset)
    adapter_result = evaluator.evaluate_version(version, data)
    base_result, cached = evaluator.evaluate_base(
        version["base_model"]["name"], task_of(version), data
    )
    return EvaluationReport(adapter=adapter_result, base=base_result, base_cached=cached)
