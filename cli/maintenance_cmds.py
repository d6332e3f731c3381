"""Maintenance commands that run on the server side: gc and fsck.

Like `token create`, they open the database and the blob store directly
(ADAPTERREG_DATABASE_URL, ADAPTERREG_STORAGE_URL) instead of calling the API.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import click
from sqlalchemy.orm import Session

from cli.errors import exit_code_for, handle_errors, json_option
from cli.output import print_json, print_table
from registry import errors
from registry.config import Settings
from registry.db.migrate import check_schema_current
from registry.db.session import create_db_engine, create_session_factory, session_scope
from registry.services.actors import LOCAL_ADMIN
from registry.services.fsck import check_integrity
from registry.services.gc import collect_garbage
from registry.services.uow import UnitOfWork
from registry.storage import open_blob_store
from registry.storage.base import BlobStore


@contextmanager
def _server_resources(settings: Settings) -> Iterator[tuple[UnitOfWork, BlobStore]]:
    engine = create_db_engine(settings.database_url)
    try:
        check_schema_current(engine)
        factory = create_session_factory(engine)

        def unit_of_work() -> AbstractContextManager[Session]:
            return session_scope(factory)

        yield unit_of_work, open_blob_store(settings.storage_url)
    finally:
        engine.dispose()


@click.command()
@click.option(
    "--grace-seconds",
    type=click.IntRange(min=0),
    default=None,
    help="Keep unreferenced blobs and idle uploads younger than this many seconds "
    "(default: ADAPTERREG_GC_GRACE_SECONDS, 86400).",
)
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@json_option
@handle_errors
def gc(grace_seconds: int | None, dry_run: bool, as_json: bool) -> None:
    """Delete unreferenced blobs and abandoned uploads older than the grace period."""
    settings = Settings.from_env()
    grace = settings.gc_grace_seconds if grace_seconds is None else grace_seconds
    with _server_resources(settings) as (uow, store):
        report = collect_garbage(uow, store, LOCAL_ADMIN, grace_seconds=grace, dry_run=dry_run)
    if as_json:
        print_json(report)
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"gc {verb} {len(report['deleted_blobs'])} blobs ({report['deleted_bytes']} bytes), "
        f"{len(report['deleted_unrecorded_objects'])} objects without a blob row, "
        f"{len(report['aborted_uploads'])} idle uploads and "
        f"{len(report['removed_staged_uploads'])} staged leftovers; "
        f"{report['kept_within_grace']} unreferenced blobs are younger than {grace} s"
    )


@click.command()
@json_option
@handle_errors
def fsck(as_json: bool) -> None:
    """Re-hash every stored blob; exit 6 if any is damaged or missing.

    Damaged objects are moved under quarantine/ in the store, so that pushing
    a version that contains the file uploads it again.
    """
    with _server_resources(Settings.from_env()) as (uow, store):
        report = check_integrity(uow, store, LOCAL_ADMIN)
    if as_json:
        print_json(report)
    else:
        _print_fsck(report)
    if not report["ok"]:
        sys.exit(exit_code_for(errors.IntegrityError("")))


def _print_fsck(report: dict[str, Any]) -> None:
    if report["ok"]:
        click.echo(f"fsck: {report['checked']} blobs ({report['bytes_read']} bytes) are intact")
        return
    rows = [
        {
            "digest": problem["digest"],
            "problem": problem["problem"],
            "referenced by": [
                f"{use['kind']} {use['name']} {use['path']}".strip()
                for use in problem["referenced_by"]
            ],
            "detail": problem["detail"],
        }
        for problem in report["problems"]
    ]
    print_table(rows, ["digest", "problem", "referenced by", "detail"])
    click.echo(
        f"fsck: {len(rows)} of {report['checked']} blobs are damaged or missing; push the "
        "versions that reference them again (or register the base models and datasets "
        "again with their files), which uploads the missing files, or restore the objects "
        "from a backup",
        err=True,
    )
    quarantined = [p["quarantined_to"] for p in report["problems"] if p.get("quarantined_to")]
    for location in quarantined:
        click.echo(f"fsck: moved a damaged object to {location}", err=True)


COMMANDS = [gc, fsck]
