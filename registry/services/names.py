"""Names and references: what users type to point at adapters and versions."""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import InvalidInput

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,127}$")
# ASCII digits only: str.isdigit() also accepts characters such as '²' that int() rejects.
VERSION_PATTERN = re.compile(r"^[0-9]+$")
# Version numbers are stored in 32-bit integer columns (PostgreSQL ``integer``).
MAX_VERSION = 2**31 - 1
REFERENCE_FORMS = "use name (the latest version), name@3 (a version) or name@alias"


def check_name(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it is URL-safe: letters, digits, '.', '_', '-', at most 128."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise InvalidInput(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return name


def check_alias(alias: str) -> str:
    """Return ``alias`` if valid; aliases start with a letter so they never look like a version."""
    if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias) or ".." in alias:
        raise InvalidInput(
            f"invalid alias {alias!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter"
        )
    return alias


@dataclass(frozen=True)
class Reference:
    """``name`` (latest), ``name@3`` (a version) or ``name@production`` (an alias)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def parse_reference(text: str) -> Reference:
    """Parse ``name``, ``name@3`` or ``name@alias``; raise InvalidInput naming ``text``."""
    if not isinstance(text, str):
        raise InvalidInput(f"invalid reference {text!r}: {REFERENCE_FORMS}")
    name, sep, ref = text.partition("@")
    try:
        check_name(name, what="adapter name")
    except InvalidInput as e:
        raise InvalidInput(f"invalid reference {text!r}: {e.detail}; {REFERENCE_FORMS}") from None
    if not sep:
        return Reference(name)
    if VERSION_PATTERN.fullmatch(ref):
        version = int(ref)
        if not 1 <= version <= MAX_VERSION:
            raise InvalidInput(
                f"invalid version in {text!r}: versions are numbers from 1 to {MAX_VERSION}"
            )
        return Reference(name, version=version)
    if not ref:
        raise InvalidInput(
            f"invalid reference {text!r}: put a version or an alias after '@'; {REFERENCE_FORMS}"
        )
    try:
        return Reference(name, alias=check_alias(ref))
    except InvalidInput as e:
        raise InvalidInput(f"invalid reference {text!r}: {e.detail}; {REFERENCE_FORMS}") from None


def parse_dataset_reference(text: str) -> tuple[str, str]:
    """Split ``name@version`` of a dataset; both parts are required."""
    name, sep, version = text.partition("@")
    if not sep or not version:
        raise InvalidInput(f"invalid dataset reference {text!r}: use NAME@VERSION, e.g. fortunes@1")
    return check_name(name, what="dataset name"), check_name(version, what="dataset version")
