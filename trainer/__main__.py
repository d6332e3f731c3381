"""Run `adapterreg train` as ``python -m trainer``, which torchrun needs for DDP.

    torchrun --nproc-per-node 2 -m trainer --base-model minilm --dataset fortunes@1 \\
        --adapter topics
"""

from __future__ import annotations

import logging
import os

from cli.train import train


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The same default as the `adapterreg` command: no Hugging Face Hub access.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train(prog_name="python -m trainer")


if __name__ == "__main__":
    main()
