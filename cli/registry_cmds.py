"""Commands that talk to a registry through the client SDK."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cli.errors import handle_errors, json_option
from cli.output import console, print_fields, print_json, print_table, transfer_progress
from registry.client import RegistryClient
from registry.errors import InvalidInput


def _client() -> RegistryClient:
    return RegistryClient.from_env()


def _parse_tags(tags: tuple[str, ...]) -> dict[str, str]:
    result = {}
    for item in tags:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"invalid --tag {item!r}: use KEY=VALUE")
        result[key] = value
    return result


# Base models


@click.group("base-model")
def base_model() -> None:
    """Register and inspect base models."""


@base_model.command("register")
@click.argument("name")
@click.option(
    "--path",
    "path",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Model directory (config.json + *.safetensors).",
)
@click.option("--revision", help="Revision label, e.g. a commit of the model repository.")
@click.option("--source-uri", help="Where serving systems find the model (default: the path).")
@click.option("--upload", is_flag=True, help="Also store the model's files as blobs.")
@json_option
@handle_errors
def base_model_register(
    name: str, path: Path, revision: str | None, source_uri: str | None, upload: bool, as_json: bool
) -> None:
    """Record a base model: fingerprint and module manifest read from safetensors headers."""
    with transfer_progress(upload and not as_json) as progress:
        result = _client().register_base_model(
            name,
            path,
            revision=revision,
            source_uri=source_uri,
            upload=upload,
            progress=progress,
        )
    if as_json:
        print_json(result)
        return
    verb = "registered" if result["created"] else "already registered"
    click.echo(
        f"base model {name!r} {verb}: {result['architecture']}, "
        f"{result['tensor_count']} tensors, fingerprint {result['fingerprint']}"
    )


@base_model.command("list")
@json_option
@handle_errors
def base_model_list(as_json: bool) -> None:
    items = _client().list_base_models()
    if as_json:
        print_json({"items": items})
    else:
        print_table(items, ["name", "architecture", "revision", "tensor_count", "fingerprint"])


@base_model.command("show")
@click.argument("name")
@json_option
@handle_errors
def base_model_show(name: str, as_json: bool) -> None:
    result = _client().get_base_model(name)
    if as_json:
        print_json(result)
    else:
        print_fields(
            result,
            [
                "name",
                "architecture",
                "revision",
                "source_uri",
                "fingerprint",
                "tensor_count",
                "uploaded",
                "created_by",
                "created_at",
            ],
        )


# Datasets


@click.group()
def dataset() -> None:
    """Register and inspect dataset versions."""


@dataset.command("register")
@click.argument("name")
@click.option(
    "--path",
    "path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A .jsonl or .csv file.",
)
@click.option("--version", help="Version label (default: the next integer).")
@click.option("--upload", is_flag=True, help="Also store the file as a blob.")
@json_option
@handle_errors
def dataset_register(
    name: str, path: Path, version: str | None, upload: bool, as_json: bool
) -> None:
    """Record a dataset version with sha256, row count, columns and label set."""
    result = _client().register_dataset(name, path, version=version, upload=upload)
    if as_json:
        print_json(result)
        return
    verb = "registered" if result["created"] else "already registered"
    click.echo(
        f"dataset {name}@{result['version']} {verb}: {result['row_count']} rows, "
        f"splits {result['splits'] or '-'}, digest {result['digest']}"
    )


@dataset.command("list")
@click.argument("name", required=False)
@json_option
@handle_errors
def dataset_list(name: str | None, as_json: bool) -> None:
    items = _client().list_datasets(name)
    if as_json:
        print_json({"items": items})
    else:
        print_table(items, ["name", "version", "format", "row_count", "splits", "digest"])


@dataset.command("show")
@click.argument("ref")
@json_option
@handle_errors
def dataset_show(ref: str, as_json: bool) -> None:
    """Show NAME@VERSION."""
    name, _, version = ref.partition("@")
    if not version:
        raise InvalidInput(f"invalid dataset reference {ref!r}: use NAME@VERSION")
    result = _client().get_dataset(name, version)
    if as_json:
        print_json(result)
    else:
        print_fields(
            result,
            [
                "name",
                "version",
                "uri",
                "digest",
                "size",
                "format",
                "row_count",
                "columns",
                "label_set",
                "splits",
                "uploaded",
                "created_at",
            ],
        )


# Adapters


@click.command()
@click.argument("name")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base-model", required=True, help="Registered base model the adapter is for.")
@click.option("--dataset", "datasets", multiple=True, help="NAME@VERSION; repeatable.")
@click.option(
    "--run",
    "run_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON file describing the training run.",
)
@click.option("--tag", "tags", multiple=True, help="KEY=VALUE; repeatable.")
@click.option("--parent", "parents", multiple=True, help="NAME@VERSION this one derives from.")
@click.option("--description", help="Free text shown by `show`.")
@json_option
@handle_errors
def push(
    name: str,
    directory: Path,
    base_model: str,
    datasets: tuple[str, ...],
    run_file: Path | None,
    tags: tuple[str, ...],
    parents: tuple[str, ...],
    description: str | None,
    as_json: bool,
) -> None:
    """Upload a PEFT adapter directory as a new version of NAME."""
    run = _read_run(run_file) if run_file else None
    with transfer_progress(not as_json) as progress:
        result = _client().push(
            name,
            directory,
            base_model=base_model,
            datasets=list(datasets),
            run=run,
            tags=_parse_tags(tags),
            parents=[{"ref": p, "relation": "derived"} for p in parents],
            description=description,
            progress=progress,
        )
    if as_json:
        print_json(result)
        return
    state = (
        "created"
        if result["created"]
        else "already exists with identical content; returned it unchanged"
    )
    click.echo(
        f"{result['name']}@{result['version']} {state}  {result['method']}  "
        f"{result['trainable_params']} params  {result['digest']}"
    )
    note = existing_version_tags_note(result)
    if note:
        click.echo(note)


def existing_version_tags_note(result: dict[str, Any]) -> str | None:
    """Describe which tags an existing version returned by a push kept and which it ignored."""
    ignored = result.get("tags_ignored") or {}
    if result.get("created", True) or not ignored:
        return None
    stored_tags = ", ".join(f"{key}={value}" for key, value in (result.get("tags") or {}).items())
    ignored_tags = ", ".join(f"{key}={value}" for key, value in ignored.items())
    return (
        f"tags not applied: {ignored_tags}; version {result['version']} keeps its tags "
        f"({stored_tags or 'none'}) because tags are set when a version is created"
    )


def _read_run(path: Path) -> dict[str, Any]:
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InvalidInput(f"--run file {str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(run, dict):
        raise InvalidInput(f"--run file {str(path)!r} must hold a JSON object")
    return run


@click.command()
@click.argument("ref")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@json_option
@handle_errors
def pull(ref: str, dest: Path, as_json: bool) -> None:
    """Download NAME[@VERSION|@ALIAS] into DEST, verifying every file's sha256."""
    with transfer_progress(not as_json) as progress:
        result = _client().pull(ref, dest, progress=progress)
    if as_json:
        print_json(result)
    else:
        click.echo(
            f"pulled {result['name']}@{result['version']} into {dest} "
            f"({len(result['files'])} files verified)"
        )


@click.command("list")
@click.option("--base-model", help="Only adapters of this base model.")
@click.option("--method", help="Only adapters with a version of this method (lora, ia3, ...).")
@click.option("--tag", help="Only adapters with a version tagged KEY=VALUE.")
@click.option("--limit", type=int, default=50, show_default=True, help="Page size.")
@click.option("--cursor", help="next_cursor of the previous page.")
@json_option
@handle_errors
def list_adapters(
    base_model: str | None,
    method: str | None,
    tag: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List adapters by name."""
    page = _client().list_adapters(
        base_model=base_model, method=method, tag=tag, limit=limit, cursor=cursor
    )
    if as_json:
        print_json(page)
        return
    print_table(
        page["items"],
        ["name", "base_model", "task_type", "latest_version", "version_count", "aliases"],
    )
    if page["next_cursor"]:
        click.echo(f"more: --cursor {page['next_cursor']}")


@click.command()
@click.argument("name")
@click.option("--method", help="Only versions of this method.")
@click.option("--tag", help="Only versions tagged KEY=VALUE.")
@click.option("--limit", type=int, default=50, show_default=True, help="Page size.")
@click.option("--cursor", help="next_cursor of the previous page.")
@json_option
@handle_errors
def versions(
    name: str, method: str | None, tag: str | None, limit: int, cursor: str | None, as_json: bool
) -> None:
    """List the versions of NAME, newest first."""
    page = _client().list_versions(name, method=method, tag=tag, limit=limit, cursor=cursor)
    if as_json:
        print_json(page)
        return
    print_table(
        page["items"],
        [
            "version",
            "method",
            "rank",
            "trainable_params",
            "aliases",
            "created_by",
            "created_at",
            "digest",
        ],
    )
    if page["next_cursor"]:
        click.echo(f"more: --cursor {page['next_cursor']}")


@click.command()
@click.argument("ref")
@json_option
@handle_errors
def show(ref: str, as_json: bool) -> None:
    """Show a version: config, files, lineage and its training run."""
    result = _client().get_version(ref)
    if as_json:
        print_json(result)
        return
    print_fields(
        result,
        [
            "ref",
            "digest",
            "method",
            "peft_type",
            "task_type",
            "rank",
            "target_modules",
            "trainable_params",
            "total_size",
            "aliases",
            "tags",
            "created_by",
            "created_at",
            "description",
        ],
    )
    base = result["base_model"]
    console.print(
        f"[bold]base model[/bold]  {base['name']} rev {base['revision'] or '-'} "
        f"{base['fingerprint']}",
        highlight=False,
    )
    for item in result["datasets"]:
        console.print(
            f"[bold]dataset[/bold]     {item['name']}@{item['version']} {item['digest']}",
            highlight=False,
        )
    print_table(result["files"], ["path", "size", "digest"], title="files")
    if result["run"]:
        _print_run(result["run"])


def _print_run(run: dict[str, Any]) -> None:
    console.print("[bold]training run[/bold]")
    print_fields(
        run,
        [
            "task",
            "method",
            "seed",
            "code_version",
            "trainable_params",
            "total_params",
            "wall_time_s",
            "started_at",
            "ended_at",
            "packages",
            "hardware",
            "hyperparameters",
        ],
    )
    if run["metrics"]:
        columns = sorted({key for row in run["metrics"] for key in row})
        print_table(run["metrics"], columns, title="metrics")


@click.command()
@click.argument("ref")
@json_option
@handle_errors
def lineage(ref: str, as_json: bool) -> None:
    """Show where a version came from: base model, datasets, run and parents."""
    result = _client().lineage(ref)
    if as_json:
        print_json(result)
        return
    from rich.tree import Tree

    console.print(_lineage_tree(result, Tree(f"[bold]{result['ref']}[/bold]")))


def _lineage_tree(node: dict[str, Any], tree: Any) -> Any:
    base = node["base_model"]
    tree.add(f"base {base['name']} rev {base['revision'] or '-'} {base['fingerprint'][:19]}...")
    for item in node["datasets"]:
        tree.add(f"dataset {item['name']}@{item['version']} {item['digest'][:19]}...")
    if node.get("run"):
        run = node["run"]
        tree.add(
            f"run {run['id']}: {run['method']} seed {run['seed']} code {run['code_version'] or '-'}"
        )
    for parent in node.get("parents", []):
        weight = f" weight {parent['weight']}" if parent.get("weight") is not None else ""
        branch = tree.add(f"parent {parent['ref']} ({parent['relation']}{weight})")
        if "base_model" in parent:
            _lineage_tree(parent, branch)
    return tree


@click.command()
@click.argument("ref")
@json_option
@handle_errors
def resolve(ref: str, as_json: bool) -> None:
    """Resolve a reference to version, digest, base model and download URLs."""
    result = _client().resolve(ref)
    if as_json:
        print_json(result)
    else:
        click.echo(
            f"{result['name']}@{result['version']} {result['digest']} "
            f"base {result['base_model']['name']}"
        )


@click.group()
def alias() -> None:
    """Point unprotected aliases at versions (`adapterreg history` lists their moves)."""


@alias.command("set")
@click.argument("name")
@click.argument("alias_name")
@click.argument("version", type=int)
@click.option("--reason", help="Why the alias moves; kept in its history.")
@json_option
@handle_errors
def alias_set(name: str, alias_name: str, version: int, reason: str | None, as_json: bool) -> None:
    """Point ALIAS_NAME of NAME at VERSION (not for protected aliases such as production)."""
    result = _client().set_alias(name, alias_name, version, reason=reason)
    if as_json:
        print_json(result)
    else:
        click.echo(f"{name}@{alias_name} -> {result['version']}")


@click.command()
@click.argument("name")
@click.option("--alias", "alias_name", help="Only this alias.")
@json_option
@handle_errors
def history(name: str, alias_name: str | None, as_json: bool) -> None:
    """List every move of NAME's aliases: from, to, who, when, why, evidence."""
    items = _client().alias_history(name, alias_name)
    if as_json:
        print_json({"items": items})
    else:
        print_table(items, ["id", "alias", "from_version", "to_version", "actor", "at", "reason"])


@click.command()
@click.argument("name")
@click.option("--alias", "alias_name", required=True, help="Alias to move back.")
@click.option("--reason", required=True, help="Why; kept in the alias history.")
@json_option
@handle_errors
def rollback(name: str, alias_name: str, reason: str, as_json: bool) -> None:
    """Move ALIAS of NAME back to the version it pointed at before its latest move."""
    result = _client().rollback(name, alias_name, reason=reason)
    if as_json:
        print_json(result)
    else:
        click.echo(f"{name}@{alias_name} rolled back to version {result['version']}")


@click.command()
@click.option("--after-id", type=int, default=0, help="Only events after this id.")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
@handle_errors
def audit(after_id: int, limit: int, as_json: bool) -> None:
    """List audit events, oldest first."""
    items = _client().audit_events(after_id=after_id, limit=limit)
    if as_json:
        print_json({"items": items})
    else:
        print_table(items, ["id", "at", "actor", "action", "entity_type", "entity_id"])


COMMANDS = [
    base_model,
    dataset,
    push,
    pull,
    list_adapters,
    versions,
    show,
    lineage,
    resolve,
    alias,
    history,
    rollback,
    audit,
]
