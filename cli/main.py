"""Entry point of the `adapterreg` command."""

from __future__ import annotations

import logging
import os

import click

from cli import maintenance_cmds, registry_cmds, server_cmds
from cli.demo import demo
from registry import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="adapterreg")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def main(verbose: int) -> None:
    """adapterreg: version, evaluate, merge and promote PEFT adapters.

    Commands that talk to a registry use ADAPTERREG_URL (default
    http://127.0.0.1:8765) and ADAPTERREG_TOKEN.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # botocore's debug lines print signed request headers and httpx's info lines print
    # every URL, presigned downloads included: keep both out even with -vv.
    for library in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(library).setLevel(max(level, logging.INFO))
    for library in ("httpx", "httpcore"):
        logging.getLogger(library).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


for command in (
    *server_cmds.COMMANDS,
    *registry_cmds.COMMANDS,
    *maintenance_cmds.COMMANDS,
    demo,
):
    main.add_command(command)


def _register_optional_commands() -> None:
    """Add commands whose modules need torch; the registry alone runs without them."""
    # The lifecycle commands import the trainer only when they run models.
    from cli.lifecycle import COMMANDS as lifecycle_commands

    for lifecycle_command in lifecycle_commands:
        main.add_command(lifecycle_command)
    try:
        from cli.train import train
    except ImportError:  # NOTE: trainer extras not installed; `train` is absent.
        return
    main.add_command(train)


_register_optional_commands()


if __name__ == "__main__":
    main()
