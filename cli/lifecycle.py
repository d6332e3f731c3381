"""Commands of the adapter lifecycle: evaluate, merge, promote, approve, worker, gates.

Commands that run models import the trainer (torch, peft) only when invoked,
so the registry-only commands here work without the training extras.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click

from cli.errors import exit_code_for, handle_errors, json_option
from cli.output import console, err_console, print_fields, print_json, print_table
from cli.params import FINITE_FLOAT
from registry.client import RegistryClient
from registry.errors import GateRejected, InvalidInput

FINAL_STATES = ("rejected", "promoted", "failed")
# Exit status of `promote` when the request ends failed: its evaluation errored on every try.
FAILED_EXIT_CODE = 1


def _client() -> RegistryClient:
    return RegistryClient.from_env()


def _eval_options(function: Any) -> Any:
    options = [
        click.option(
            "--max-samples",
            type=int,
            default=500,
            show_default=True,
            help="Rows of the split evaluated, a seeded sample; 0 for all.",
        ),
        click.option(
            "--max-length",
            type=int,
            default=128,
            show_default=True,
            help="Tokens per example after truncation.",
        ),
        click.option(
            "--batch-size",
            type=int,
            default=32,
            show_default=True,
            help="Examples per forward pass.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _eval_settings(split: str, max_samples: int, max_length: int, batch_size: int) -> Any:
    from trainer.evaluate import EvalSettings

    if max_samples < 0 or max_length < 1 or batch_size < 1:
        raise InvalidInput("--max-samples must be >= 0, --max-length and --batch-size >= 1")
    return EvalSettings(
        split=split, max_samples=max_samples or None, max_length=max_length, batch_size=batch_size
    )


# Evaluate


@click.command()
@click.argument("ref")
@click.option("--dataset", required=True, help="NAME@VERSION of the evaluation dataset.")
@click.option("--split", default="test", show_default=True, help="Split of the dataset.")
@_eval_options
@json_option
@handle_errors
def evaluate(
    ref: str,
    dataset: str,
    split: str,
    max_samples: int,
    max_length: int,
    batch_size: int,
    as_json: bool,
) -> None:
    """Evaluate adapter REF and its bare base model on the same examples and record both.

    For seq-cls the base model has no trained head; it is run as a zero-shot
    classifier (nearest label-name embedding), a weak but honest baseline.
    """
    from trainer.evaluate import evaluate_adapter

    settings = _eval_settings(split, max_samples, max_length, batch_size)
    report = evaluate_adapter(_client(), ref, dataset, settings=settings).to_dict()
    if as_json:
        print_json(report)
        return
    rows = [
        _evaluation_row("adapter", report["adapter"]),
        _evaluation_row("base (cached)" if report["base_cached"] else "base", report["base"]),
    ]
    metrics = sorted({key for row in rows for key in row} - {"subject", "id", "samples"})
    print_table(rows, ["subject", "id", "samples", *metrics], title=f"{dataset} split {split}")
    if report["baseline"]:
        click.echo(
            f"base model run as {report['baseline']}: it has no trained head, so each "
            "text gets the label whose name embeds closest; it reports no loss"
        )


def _evaluation_row(role: str, evaluation: dict[str, Any]) -> dict[str, Any]:
    metrics = {key: f"{value:.4f}" for key, value in evaluation["metrics"].items()}
    return {
        "subject": f"{role} {evaluation['subject']['ref']}",
        "id": evaluation["id"],
        "samples": evaluation["sample_count"],
        **metrics,
    }


@click.command("evaluations")
@click.option("--subject", help="Adapter name or NAME@VERSION.")
@click.option("--dataset", help="NAME@VERSION.")
@click.option("--promotion", "promotion_id", type=int, help="Only those of this promotion.")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
@handle_errors
def evaluations(
    subject: str | None, dataset: str | None, promotion_id: int | None, limit: int, as_json: bool
) -> None:
    """List recorded evaluations, newest first."""
    items = _client().list_evaluations(
        subject=subject, dataset=dataset, promotion_request_id=promotion_id, limit=limit
    )
    if as_json:
        print_json({"items": items})
        return
    rows = [{**item, "subject": item["subject"]["ref"]} for item in items]
    print_table(
        rows,
        [
            "id",
            "subject",
            "dataset",
            "split",
            "metrics",
            "sample_count",
            "created_by",
            "created_at",
        ],
    )


# Merge


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the merged model (merge into the base).",
)
@click.option("--register", help="Record the merged model under this name.")
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Dtype of the merged weights.",
)
@click.option(
    "--max-shard-size",
    default="2GB",
    show_default=True,
    help="Largest safetensors file, e.g. 500MB.",
)
@click.option(
    "--tolerance",
    type=FINITE_FLOAT,
    help="Largest accepted max |logit difference| (default by dtype).",
)
@click.option("--upload", is_flag=True, help="Also store the merged files as blobs.")
@click.option(
    "--method",
    type=click.Choice(["linear", "cat", "ties", "dare_linear", "dare_ties"]),
    help="Combine several LoRA versions into a new adapter version instead.",
)
@click.option("--weights", help="Comma-separated weight per adapter (default: 1/n each).")
@click.option("--density", type=FINITE_FLOAT, help="Fraction kept by ties and dare_*, in (0, 1].")
@click.option("--adapter", help="Adapter name of the combined version (with --method).")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the sample inputs and of dare's random drops.",
)
@json_option
@handle_errors
def merge(
    refs: tuple[str, ...],
    out_dir: Path | None,
    register: str | None,
    dtype: str,
    max_shard_size: str,
    tolerance: float | None,
    upload: bool,
    method: str | None,
    weights: str | None,
    density: float | None,
    adapter: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """Merge REF into its base weights (--out), or combine REFS into a new version (--method)."""
    _check_merge_mode(
        method,
        base_options={"--out": out_dir, "--register": register, "--upload": upload or None},
        combine_options={"--adapter": adapter, "--weights": weights, "--density": density},
    )
    if method:
        result = _combine(
            list(refs), method=method, weights=weights, density=density, adapter=adapter, seed=seed
        )
        if as_json:
            print_json(result)
        else:
            click.echo(
                f"{result['name']}@{result['version']} created by {method} merge of "
                f"{', '.join(refs)}  {result['digest']}"
            )
        return
    result = _merge_into_base(
        refs,
        out_dir,
        register=register,
        dtype=dtype,
        max_shard_size=max_shard_size,
        tolerance=tolerance,
        upload=upload,
        seed=seed,
    )
    if as_json:
        print_json(result)
        return
    click.echo(
        f"merged {result['ref']} into {result['path']} ({result['dtype']}, "
        f"{len(result['files'])} files); max |difference| {result['max_abs_diff']:.3g} "
        f"<= tolerance {result['tolerance']:.3g}"
    )
    if result["registered"]:
        click.echo(f"registered merged model {result['registered']['name']!r}")


def _check_merge_mode(
    method: str | None, *, base_options: dict[str, Any], combine_options: dict[str, Any]
) -> None:
    """Reject options of the other kind of merge instead of ignoring them."""
    if method:
        misplaced = [name for name, value in base_options.items() if value is not None]
        if misplaced:
            raise InvalidInput(
                f"{', '.join(misplaced)} apply to merging one adapter into its base; --method "
                "creates a new adapter version instead, named by --adapter"
            )
        return
    misplaced = [name for name, value in combine_options.items() if value is not None]
    if misplaced:
        raise InvalidInput(
            f"{', '.join(misplaced)} apply to combining adapters; add --method "
            "linear|cat|ties|dare_linear|dare_ties"
        )


def _merge_into_base(refs: tuple[str, ...], out_dir: Path | None, **options: Any) -> dict[str, Any]:
    if len(refs) != 1 or out_dir is None:
        raise InvalidInput(
            "merging into the base takes one REF and --out DIR; to combine several adapters "
            "pass --method and --adapter"
        )
    from trainer.merge import MergeOptions, merge_into_base

    register = options.pop("register")
    return merge_into_base(
        _client(), refs[0], out_dir, register=register, options=MergeOptions(**options)
    )


def _combine(
    refs: list[str],
    *,
    method: str,
    weights: str | None,
    density: float | None,
    adapter: str | None,
    seed: int,
) -> dict[str, Any]:
    if not adapter:
        raise InvalidInput("--method needs --adapter NAME for the new version")
    from trainer.merge import CombineOptions, combine_adapters

    parsed = _parse_weights(weights, len(refs))
    options = CombineOptions(method=method, weights=parsed, density=density, seed=seed)
    return combine_adapters(_client(), refs, adapter=adapter, options=options)


def _parse_weights(text: str | None, count: int) -> tuple[float, ...]:
    if text is None:
        return tuple(1.0 / count for _ in range(count))
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise InvalidInput(
            f"invalid --weights {text!r}: use numbers separated by commas, e.g. 0.7,0.3"
        ) from None
    if not all(math.isfinite(weight) for weight in weights):
        raise InvalidInput(
            f"invalid --weights {text!r}: nan and inf are not weights; use finite numbers "
            "separated by commas, e.g. 0.7,0.3"
        )
    return weights


@click.command("merged-models")
@json_option
@handle_errors
def merged_models(as_json: bool) -> None:
    """List merged models with their parents and equivalence check."""
    items = _client().list_merged_models()
    if as_json:
        print_json({"items": items})
        return
    rows = [{**item, "parents": [p["ref"] for p in item["parents"]]} for item in items]
    print_table(
        rows,
        [
            "name",
            "method",
            "dtype",
            "parents",
            "max_abs_diff",
            "total_size",
            "uploaded",
            "created_at",
        ],
    )


# Promote, approve, reject


@click.command()
@click.argument("ref")
@click.option("--to", "alias", required=True, help="Alias to move, e.g. production.")
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    help="NAME@VERSION; repeatable, the first is primary (default: the version's).",
)
@click.option("--split", default="test", show_default=True)
@click.option("--reason", help="Why; kept in the request and the alias history.")
@click.option("--wait", is_flag=True, help="Follow the request to its end.")
@click.option("--local", is_flag=True, help="Evaluate in this process instead of a worker.")
@click.option(
    "--timeout",
    type=FINITE_FLOAT,
    default=3600,
    show_default=True,
    help="Seconds --wait follows the request (also --local, when a worker claimed it first).",
)
@_eval_options
@json_option
@handle_errors
def promote(
    ref: str,
    alias: str,
    datasets: tuple[str, ...],
    split: str,
    reason: str | None,
    wait: bool,
    local: bool,
    timeout: float,
    max_samples: int,
    max_length: int,
    batch_size: int,
    as_json: bool,
) -> None:
    """Request moving ALIAS to version REF; the gate decides on fresh evaluations.

    --max-samples, --max-length and --batch-size apply with --local. A worker
    evaluates with the values it was started with.
    """
    client = _client()
    request = client.request_promotion(
        ref, alias, datasets=list(datasets), split=split, reason=reason
    )
    if not as_json:
        click.echo(
            f"promotion {request['id']} requested: {request['ref']} -> {alias} on "
            f"{', '.join(request['datasets'])} split {split}",
            err=True,
        )
    if local:
        settings = _eval_settings(split, max_samples, max_length, batch_size)
        request = _run_locally(client, request["id"], settings, timeout=timeout, quiet=as_json)
    elif wait:
        request = _follow(client, request["id"], timeout=timeout, quiet=as_json)
    _print_promotion(request, as_json=as_json)
    if request["state"] == "rejected":
        if as_json:
            # The request document above is the one JSON output; only the exit code remains.
            sys.exit(exit_code_for(GateRejected("")))
        raise GateRejected(_rejection_summary(request))
    if request["state"] == "failed":
        if not as_json:
            click.echo(
                f"error: promotion {request['id']} failed: {request['error']}; fix the cause and "
                "request it again",
                err=True,
            )
        sys.exit(FAILED_EXIT_CODE)


def _run_locally(
    client: RegistryClient, request_id: int, settings: Any, *, timeout: float, quiet: bool
) -> dict[str, Any]:
    from trainer.worker import run_worker

    with err_console.status(f"evaluating promotion {request_id} in this process"):
        processed = run_worker(client, once=True, request_id=request_id, settings=settings)
    if processed:
        return client.get_promotion(request_id)
    # A worker claimed the request between its creation and this claim: follow it.
    return _follow(client, request_id, timeout=timeout, quiet=quiet)


def _follow(
    client: RegistryClient, request_id: int, *, timeout: float, quiet: bool
) -> dict[str, Any]:
    def show(request: dict[str, Any]) -> None:
        if not quiet:
            worker = f" by {request['claimed_by']}" if request["claimed_by"] else ""
            err_console.print(
                f"promotion {request_id}: {request['state']}{worker}", highlight=False
            )

    with err_console.status(f"waiting for promotion {request_id}"):
        client.wait_for_promotion(request_id, timeout=timeout, on_update=show)
    return client.get_promotion(request_id)


def _rejection_summary(request: dict[str, Any]) -> str:
    decision = request.get("decision") or {}
    failed = [check["detail"] for check in decision.get("checks", []) if not check["passed"]]
    reason = "; ".join(failed) or request.get("error") or "rejected"
    return f"promotion {request['id']} of {request['ref']} was rejected: {reason}"


def _print_promotion(request: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(request)
        return
    print_fields(
        request,
        [
            "id",
            "ref",
            "alias",
            "state",
            "datasets",
            "split",
            "current_version",
            "requested_by",
            "decided_by",
            "attempts",
            "error",
        ],
    )
    decision = request.get("decision")
    if decision:
        policy = decision["policy"]
        console.print(
            f"[bold]gate[/bold] {policy['scope']}: metric {decision['metric']}, "
            f"min margin {policy['min_margin']}, max regression "
            f"{policy['max_regression']} -> "
            f"{'passed' if decision['passed'] else 'FAILED'}",
            highlight=False,
        )
        rows = [
            {
                **check,
                **{key: _number(check[key]) for key in ("candidate", "reference", "improvement")},
                "passed": "yes" if check["passed"] else "NO",
            }
            for check in decision["checks"]
        ]
        print_table(
            rows,
            [
                "name",
                "dataset",
                "metric",
                "candidate",
                "reference",
                "improvement",
                "required",
                "passed",
            ],
            title="checks",
        )
    if request["state"] == "awaiting_approval":
        click.echo(
            f"waiting for an approver other than {request['requested_by']!r}: "
            f"`adapterreg approve {request['id']}`"
        )


def _number(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"


@click.command()
@click.argument("request_id", type=int)
@click.option("--reason", help="Kept with the approval.")
@json_option
@handle_errors
def approve(request_id: int, reason: str | None, as_json: bool) -> None:
    """Approve promotion REQUEST_ID (role approver, not its requester); moves the alias."""
    result = _client().approve_promotion(request_id, reason=reason)
    if as_json:
        print_json(result)
    elif result["state"] == "promoted":
        click.echo(
            f"promotion {request_id} approved: {result['adapter']}@{result['alias']} -> "
            f"{result['version']}"
        )
    else:
        click.echo(f"promotion {request_id} is {result['state']}: {result['error']}")


@click.command()
@click.argument("request_id", type=int)
@click.option("--reason", required=True, help="Why; kept with the request.")
@json_option
@handle_errors
def reject(request_id: int, reason: str, as_json: bool) -> None:
    """Reject promotion REQUEST_ID that awaits approval (role approver)."""
    result = _client().reject_promotion(request_id, reason=reason)
    if as_json:
        print_json(result)
    else:
        click.echo(f"promotion {request_id} rejected")


@click.command()
@click.option("--adapter", help="Only requests of this adapter.")
@click.option("--state", help="Only requests in this state.")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
@handle_errors
def promotions(adapter: str | None, state: str | None, limit: int, as_json: bool) -> None:
    """List promotion requests, newest first."""
    items = _client().list_promotions(adapter=adapter, state=state, limit=limit)
    if as_json:
        print_json({"items": items})
    else:
        print_table(
            items,
            ["id", "ref", "alias", "state", "requested_by", "decided_by", "attempts", "updated_at"],
        )


@click.group()
def promotion() -> None:
    """Inspect one promotion request."""


@promotion.command("show")
@click.argument("request_id", type=int)
@json_option
@handle_errors
def promotion_show(request_id: int, as_json: bool) -> None:
    """Show a request: state, gate checks with their numbers, evaluations, audit trail."""
    request = _client().get_promotion(request_id)
    _print_promotion(request, as_json=as_json)
    if as_json:
        return
    if request["evaluations"]:
        rows = [{**item, "subject": item["subject"]["ref"]} for item in request["evaluations"]]
        print_table(
            rows, ["id", "subject", "dataset", "metrics", "sample_count"], title="evaluations"
        )
    print_table(request["events"], ["at", "actor", "action"], title="events")


# Worker


@click.command()
@click.option("--once", is_flag=True, help="Process at most one request, then exit.")
@click.option("--name", help="Worker name (default: host-pid-random).")
@click.option(
    "--poll-interval",
    type=FINITE_FLOAT,
    default=2.0,
    show_default=True,
    help="Seconds between claims when no request waits.",
)
@click.option(
    "--lease-seconds",
    type=int,
    default=600,
    show_default=True,
    help="Lease of a claim; renewed every third of it while evaluating.",
)
@_eval_options
@handle_errors
def worker(
    once: bool,
    name: str | None,
    poll_interval: float,
    lease_seconds: int,
    max_samples: int,
    max_length: int,
    batch_size: int,
) -> None:
    """Claim promotion requests, evaluate them and post the results, until interrupted."""
    from trainer.worker import run_worker

    settings = _eval_settings("test", max_samples, max_length, batch_size)
    # A long-running worker shows its start, claims and decisions without -v.
    worker_log = logging.getLogger("trainer.worker")
    if worker_log.getEffectiveLevel() > logging.INFO:
        worker_log.setLevel(logging.INFO)
    # SIGTERM (docker stop, systemd, kill) stops the worker like Ctrl-C, so a request
    # being evaluated is handed back at once instead of after its lease.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        count = run_worker(
            _client(),
            name=name,
            once=once,
            poll_interval=poll_interval,
            lease_seconds=lease_seconds,
            settings=settings,
            stop=threading.Event(),
        )
    except KeyboardInterrupt:
        click.echo("worker interrupted", err=True)
        return
    click.echo(f"worker processed {count} request(s)", err=True)


# Gates


@click.group()
def gate() -> None:
    """Set and show promotion gate policies."""


@gate.command("set")
@click.argument("name")
@click.option("--alias", required=True, help="Alias the policy applies to ('*' for any).")
@click.option(
    "--metric",
    type=click.Choice(["accuracy", "macro_f1", "loss", "perplexity"]),
    help="Primary metric (default: accuracy for seq-cls, loss for causal-lm).",
)
@click.option(
    "--min-margin",
    type=FINITE_FLOAT,
    default=0.0,
    show_default=True,
    help="Required improvement over the alias's current version, in metric units.",
)
@click.option(
    "--max-regression",
    type=FINITE_FLOAT,
    default=0.0,
    show_default=True,
    help="How far below the base model the candidate may fall, in metric units.",
)
@click.option(
    "--require-approval", is_flag=True, help="Ask for an approval even on unprotected aliases."
)
@json_option
@handle_errors
def gate_set(
    name: str,
    alias: str,
    metric: str | None,
    min_margin: float,
    max_regression: float,
    require_approval: bool,
    as_json: bool,
) -> None:
    """Set the gate of adapter NAME ('*' for the global default) and --alias."""
    result = _client().set_gate(
        name,
        alias,
        metric=metric,
        min_margin=min_margin,
        max_regression=max_regression,
        require_approval=require_approval,
    )
    if as_json:
        print_json(result)
    else:
        click.echo(
            f"gate {result['scope']}: metric {result['metric'] or 'task default'}, "
            f"min margin {min_margin}, max regression {max_regression}"
            f"{', approval required' if require_approval else ''}"
        )


@gate.command("show")
@click.argument("name")
@click.option("--alias", required=True)
@json_option
@handle_errors
def gate_show(name: str, alias: str, as_json: bool) -> None:
    """Show the policy a promotion of NAME to --alias would be judged by."""
    result = _client().get_gate(name, alias)
    if as_json:
        print_json(result)
    else:
        print_fields(
            result,
            ["applies_to", "scope", "metric", "min_margin", "max_regression", "require_approval"],
        )


@gate.command("list")
@json_option
@handle_errors
def gate_list(as_json: bool) -> None:
    items = _client().list_gates()
    if as_json:
        print_json({"items": items})
    else:
        print_table(
            items,
            [
                "scope",
                "metric",
                "min_margin",
                "max_regression",
                "require_approval",
                "updated_by",
                "updated_at",
            ],
        )


# Webhooks


@click.group()
def webhook() -> None:
    """Inspect outbox events and webhook deliveries."""


@webhook.command("events")
@click.option("--after-id", type=int, default=0)
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
@handle_errors
def webhook_events(after_id: int, limit: int, as_json: bool) -> None:
    """List outbox events (alias moves, promotion transitions), oldest first."""
    items = _client().list_outbox_events(after_id=after_id, limit=limit)
    if as_json:
        print_json({"items": items})
    else:
        print_table(items, ["id", "type", "created_at", "dispatched"])


@webhook.command("deliveries")
@click.option("--state", type=click.Choice(["pending", "delivered", "failed"]))
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
@handle_errors
def webhook_deliveries(state: str | None, limit: int, as_json: bool) -> None:
    """List webhook deliveries, newest first (role admin)."""
    items = _client().list_webhook_deliveries(state=state, limit=limit)
    if as_json:
        print_json({"items": items})
    else:
        print_table(
            items,
            [
                "id",
                "event_id",
                "state",
                "attempts",
                "last_status",
                "next_attempt_at",
                "delivered_at",
            ],
        )


@webhook.command("delivery")
@click.argument("delivery_id", type=int)
@json_option
@handle_errors
def webhook_delivery(delivery_id: int, as_json: bool) -> None:
    """Show one delivery with every attempt (role admin)."""
    result = _client().get_webhook_delivery(delivery_id)
    if as_json:
        print_json(result)
        return
    print_fields(
        result,
        ["id", "event_id", "url", "state", "attempts", "last_status", "last_error", "delivered_at"],
    )
    print_table(
        result["attempt_log"],
        ["attempt", "at", "status_code", "error", "duration_ms"],
        title="attempts",
    )


COMMANDS = [
    evaluate,
    evaluations,
    merge,
    merged_models,
    promote,
    approve,
    reject,
    promotions,
    promotion,
    worker,
    gate,
    webhook,
]
