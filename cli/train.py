"""`adapterreg train`: train a PEFT adapter, then push it with its lineage.

torch and the trainer are imported when the command runs, so that the rest of
the CLI starts without them. The same command runs under torchrun as
``torchrun --nproc-per-node N -m trainer --base-model ...``; there only rank 0
pushes and prints.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from click.core import ParameterSource

from cli.errors import handle_errors, json_option
from cli.output import print_json, transfer_progress
from cli.params import FINITE_FLOAT
from cli.registry_cmds import existing_version_tags_note
from registry.errors import InvalidInput, RegistryError
from registry.services.names import check_name

if TYPE_CHECKING:
    from trainer.train import TrainConfig, TrainResult

# Exit status of a run stopped by Ctrl-C, as shells report SIGINT (128 + 2).
INTERRUPTED_EXIT_CODE = 130
# Keys a --config file may set besides the command's options.
FILE_ONLY_KEYS = (
    "rank_pattern",
    "alpha_pattern",
    "weight_decay",
    "warmup_ratio",
    "max_grad_norm",
    "description",
)
REQUIRED_KEYS = ("base_model", "dataset", "adapter")
# The run record, written beside the adapter directory, that `adapterreg push --run` reads.
RUN_FILE = "run.json"


@click.command("train")
@click.option("--base-model", help="Registered base model name.  [required]")
@click.option("--dataset", help="Training dataset as NAME@VERSION.  [required]")
@click.option("--adapter", help="Adapter name to push the result as.  [required]")
@click.option(
    "--method",
    default="lora",
    show_default=True,
    help="PEFT method: lora, dora, ia3, prompt-tuning or prefix-tuning.",
)
@click.option(
    "--task",
    default="seq-cls",
    show_default=True,
    type=click.Choice(["seq-cls", "causal-lm"]),
    help="Training task.",
)
@click.option("--epochs", type=int, default=1, show_default=True, help="Passes over the data.")
@click.option(
    "--lr", type=FINITE_FLOAT, default=2e-4, show_default=True, help="Peak learning rate of AdamW."
)
@click.option(
    "--batch-size",
    type=int,
    default=16,
    show_default=True,
    help="Examples per optimizer step and process.",
)
@click.option(
    "--max-length",
    type=int,
    default=128,
    show_default=True,
    help="Maximum tokens per example; longer examples are truncated.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of initialization, shuffling and dropout.",
)
@click.option(
    "--eval-split",
    help="Split validated after each epoch; default 'validation' when the dataset "
    "has it, 'none' turns validation off.",
)
@click.option("--r", "r", type=int, help="LoRA rank (default 8).")
@click.option(
    "--alpha", type=FINITE_FLOAT, help="LoRA alpha; the update is scaled by alpha/r (default 16)."
)
@click.option("--dropout", type=FINITE_FLOAT, help="LoRA dropout probability (default 0.05).")
@click.option(
    "--target-modules",
    help="Comma-separated module names to adapt, or 'all-linear'; default: PEFT's "
    "choice for the architecture.",
)
@click.option(
    "--num-virtual-tokens", type=int, help="Soft prompt or prefix length in tokens (default 20)."
)
@click.option(
    "--quantize",
    type=click.Choice(["4bit"]),
    help="Load the base in 4-bit NF4 for QLoRA; needs bitsandbytes and CUDA.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML file of option values; options given on the command line override it.",
)
@click.option(
    "--resume",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Checkpoint directory of an interrupted run to continue.",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the adapter and checkpoints; default "
    "$ADAPTERREG_HOME/runs/<adapter>-<time>.",
)
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps in total.")
@click.option(
    "--group-by-length",
    is_flag=True,
    help="Batch examples of similar length together, which cuts padding when lengths vary.",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="KEY=VALUE",
    help="Tag of the pushed version; repeat for several.",
)
@click.option("--quiet", is_flag=True, help="No progress bars and no per-epoch log lines.")
@json_option
@click.pass_context
@handle_errors
def train(ctx: click.Context, **options: Any) -> None:
    """Train a PEFT adapter on a registered base model and dataset, then push it.

    Ctrl-C stops after the current step, saves a checkpoint and pushes nothing;
    --resume continues from that checkpoint to the same final adapter.
    """
    settings = merge_options(ctx, options)
    config = build_train_config(settings)
    _configure_logging(quiet=bool(settings.get("quiet")))
    result = _train(config, as_json=bool(options.get("as_json")))
    if not result.is_main_process:
        return
    pushed = _push(config, result, settings)
    _print_pushed(pushed, result, as_json=bool(options.get("as_json")))


def _configure_logging(*, quiet: bool) -> None:
    """Show the trainer's per-epoch lines on rank 0; other ranks report only errors."""
    from trainer.distributed import current_rank

    if current_rank() != 0:
        logging.getLogger("trainer").setLevel(logging.ERROR)
        logging.getLogger("transformers").setLevel(logging.ERROR)
    elif not quiet:
        logging.getLogger("trainer").setLevel(logging.INFO)


def merge_options(ctx: click.Context, options: dict[str, Any]) -> dict[str, Any]:
    """Return the option values: the command line over the --config file over the defaults."""
    config_file: Path | None = options.pop("config_file", None)
    from_file = read_config_file(config_file, ctx=ctx) if config_file else {}
    merged: dict[str, Any] = {}
    for name, value in options.items():
        source = ctx.get_parameter_source(name)
        given = source in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
        merged[name] = value if given or name not in from_file else from_file[name]
    merged.update({key: from_file[key] for key in FILE_ONLY_KEYS if key in from_file})
    merged["tags"] = _merge_tags(from_file.get("tags"), options.get("tags") or ())
    return merged


def read_config_file(path: Path, *, ctx: click.Context) -> dict[str, Any]:
    """Read a YAML mapping of option names (``batch-size`` or ``batch_size``) to values.

    Values of command options are converted by the option's own type. Raises
    InvalidInput on malformed YAML and on keys that are neither an option nor
    one of FILE_ONLY_KEYS.
    """
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise InvalidInput(f"--config {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(document, dict):
        raise InvalidInput(f"--config {str(path)!r} must be a mapping of option names to values")
    params = {param.name: param for param in ctx.command.params if param.name}
    allowed = {name for name in params if name not in ("config_file", "as_json")}
    allowed |= {"tag", *FILE_ONLY_KEYS}
    values: dict[str, Any] = {}
    for raw_key, value in document.items():
        key = str(raw_key).replace("-", "_")
        if key not in allowed:
            raise InvalidInput(
                f"--config {str(path)!r} has unknown key {raw_key!r}; use option names such as "
                f"{', '.join(sorted(k.replace('_', '-') for k in allowed))}"
            )
        if key in ("tag", "tags"):
            values["tags"] = value
        elif key in params and value is not None and not isinstance(value, list | dict):
            values[key] = params[key].type.convert(value, params[key], ctx)
        else:
            values[key] = value
    return values


def _merge_tags(from_file: Any, given: tuple[str, ...]) -> dict[str, str]:
    tags: dict[str, str] = {}
    if isinstance(from_file, dict):
        tags.update({str(key): str(value) for key, value in from_file.items()})
    elif from_file is not None:
        given = (*[str(item) for item in _as_list(from_file)], *given)
    for item in given:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise InvalidInput(f"--tag {item!r} must have the form KEY=VALUE, e.g. team=search")
        tags[check_name(key.strip(), what="--tag key")] = value
    return tags


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def build_train_config(settings: dict[str, Any]) -> TrainConfig:
    """Build and validate the trainer's config; raise InvalidInput naming a bad option."""
    from trainer.methods import MethodOptions
    from trainer.train import TrainConfig, validate_config

    missing = [key for key in REQUIRED_KEYS if not settings.get(key)]
    if missing:
        flags = ", ".join("--" + key.replace("_", "-") for key in missing)
        raise InvalidInput(f"missing {flags}; give it on the command line or in --config")
    method = MethodOptions(
        method=settings["method"],
        r=settings.get("r"),
        alpha=settings.get("alpha"),
        dropout=settings.get("dropout"),
        target_modules=parse_target_modules(settings.get("target_modules")),
        rank_pattern=_mapping(settings, "rank_pattern"),
        alpha_pattern=_mapping(settings, "alpha_pattern"),
        num_virtual_tokens=settings.get("num_virtual_tokens"),
        quantize=settings.get("quantize"),
    )
    optional = {
        key: settings[key]
        for key in ("weight_decay", "warmup_ratio", "max_grad_norm")
        if settings.get(key) is not None
    }
    config = TrainConfig(
        base_model=settings["base_model"],
        dataset=settings["dataset"],
        adapter=settings["adapter"],
        task=settings["task"],
        method=method,
        eval_split=settings.get("eval_split"),
        max_length=settings["max_length"],
        epochs=settings["epochs"],
        max_steps=settings.get("max_steps"),
        group_by_length=bool(settings.get("group_by_length")),
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        seed=settings["seed"],
        output_dir=settings.get("output_dir"),
        resume=settings.get("resume"),
        quiet=bool(settings.get("quiet")),
        **optional,
    )
    return validate_config(config)


def parse_target_modules(value: Any) -> tuple[str, ...] | str | None:
    """Return "all-linear", a tuple of names (from a comma-separated string or a list), or None."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip() == "all-linear":
            return "all-linear"
        return tuple(part.strip() for part in value.split(","))
    if isinstance(value, list | tuple):
        return tuple(str(part).strip() for part in value)
    raise InvalidInput(f"--target-modules {value!r} must be a comma-separated list of names")


def _mapping(settings: dict[str, Any], key: str) -> dict[str, Any] | None:
    value = settings.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise InvalidInput(
        f"{key} in --config must be a mapping of module pattern to number, got {value!r}"
    )


def _train(config: TrainConfig, *, as_json: bool) -> TrainResult:
    from registry.client import RegistryClient
    from trainer.data import parse_dataset_ref
    from trainer.train import TrainingInterrupted, train_adapter

    name, version = parse_dataset_ref(config.dataset)
    with RegistryClient.from_env() as client:
        base_record = client.get_base_model(config.base_model)
        dataset_record = client.get_dataset(name, version)
        try:
            return train_adapter(
                config, base_record=base_record, dataset_record=dataset_record, client=client
            )
        except TrainingInterrupted as interrupted:
            _report_interrupt(interrupted, as_json=as_json)
            sys.exit(INTERRUPTED_EXIT_CODE)


def _report_interrupt(interrupted: Any, *, as_json: bool) -> None:
    from trainer.distributed import current_rank

    if current_rank() != 0:
        return
    checkpoint = interrupted.checkpoint
    detail = str(interrupted) + (
        f"; nothing was pushed. Continue with the same options and --resume {checkpoint}"
        if checkpoint
        else "; nothing was pushed"
    )
    if as_json:
        document = {
            "error": "Interrupted",
            "detail": detail,
            "checkpoint": str(checkpoint) if checkpoint else None,
        }
        sys.stdout.write(json.dumps(document) + "\n")
    else:
        click.echo(detail, err=True)


def _push(config: TrainConfig, result: TrainResult, settings: dict[str, Any]) -> dict[str, Any]:
    """Push the trained adapter; on failure, raise the error with the command to push it later."""
    from registry.client import RegistryClient

    run_file = write_run_file(result)
    try:
        with (
            RegistryClient.from_env() as client,
            transfer_progress(
                not settings.get("quiet") and not settings.get("as_json")
            ) as progress,
        ):
            pushed = client.push(
                config.adapter,
                result.adapter_dir,
                base_model=config.base_model,
                datasets=[config.dataset],
                run=result.run,
                tags=settings.get("tags") or None,
                description=settings.get("description"),
                progress=progress,
            )
    except RegistryError as error:
        command = push_command(config, result, settings, run_file=run_file)
        raise type(error)(
            f"{error.detail.rstrip('.')}. Training finished, but the push failed; the adapter "
            f"is saved in {result.adapter_dir} and its run record in {run_file}. Fix the "
            f"cause, then push it with: {command}"
        ) from error
    return {**pushed, "run_file": str(run_file)}


def write_run_file(result: TrainResult) -> Path:
    """Write the run record beside the adapter directory, in the form `push --run` reads."""
    run_file = result.output_dir / RUN_FILE
    run_file.write_text(json.dumps(result.run, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return run_file


def push_command(
    config: TrainConfig, result: TrainResult, settings: dict[str, Any], *, run_file: Path
) -> str:
    """Return the `adapterreg push` command line that pushes a trained adapter by hand."""
    words = [
        "adapterreg",
        "push",
        config.adapter,
        str(result.adapter_dir),
        "--base-model",
        config.base_model,
        "--dataset",
        config.dataset,
        "--run",
        str(run_file),
    ]
    for key, value in (settings.get("tags") or {}).items():
        words += ["--tag", f"{key}={value}"]
    if settings.get("description"):
        words += ["--description", settings["description"]]
    return shlex.join(words)


def _print_pushed(pushed: dict[str, Any], result: TrainResult, *, as_json: bool) -> None:
    if as_json:
        print_json(
            {**pushed, "adapter_dir": str(result.adapter_dir), "metrics": result.run["metrics"]}
        )
        return
    last = result.run["metrics"][-1] if result.run["metrics"] else {}
    summary = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if isinstance(v, float))
    state = "pushed" if pushed.get("created", True) else "already registered as"
    click.echo(f"{state} {pushed['name']}@{pushed['version']} ({pushed['digest']})")
    note = existing_version_tags_note(pushed)
    if note:
        click.echo(note)
    if summary:
        click.echo(f"final epoch: {summary}; adapter files in {result.adapter_dir}")
