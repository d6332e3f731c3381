"""Write registry/peft_schema.json from the config dataclasses of the installed PEFT.

The registry never imports peft, so the field names of each supported PEFT
config class are recorded here, together with the PEFT version they come
from. Run it with the environment where peft is installed, after upgrading
peft:

    .venv/bin/python scripts/gen_peft_schema.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import peft

logger = logging.getLogger(__name__)

# peft_type -> config class name in the peft package.
SUPPORTED_CONFIGS = {
    "LORA": "LoraConfig",
    "ADALORA": "AdaLoraConfig",
    "IA3": "IA3Config",
    "PROMPT_TUNING": "PromptTuningConfig",
    "PREFIX_TUNING": "PrefixTuningConfig",
    "P_TUNING": "PromptEncoderConfig",
}
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "registry" / "peft_schema.json"


def build_schema() -> dict[str, Any]:
    peft_types: dict[str, Any] = {}
    for peft_type, class_name in SUPPORTED_CONFIGS.items():
        config_class = getattr(peft, class_name)
        peft_types[peft_type] = {
            "config_class": class_name,
            "fields": sorted(field.name for field in dataclasses.fields(config_class)),
        }
    return {
        "peft_version": peft.__version__,
        "task_types": sorted(task_type.value for task_type in peft.TaskType),
        "peft_types": peft_types,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file to write")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    schema = build_schema()
    args.output.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("wrote %s from peft %s", args.output, schema["peft_version"])


if __name__ == "__main__":
    main()
