"""Names and references: what users type to point at adapters and versions."""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import InvalidInput

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,127}$")


def check_name(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it is URL-safe: letters, digits, '.', '_', '-', at most 128."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise InvalidInput(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return name


def check_alias(alias: str) -> str:
    """Return ``alias`` if valid; aliases start with a letter so they never look like a version."""
    if not isinstance(alias, str) or not ALIAS_PATTERN.match(alias) or ".." in alias:
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
    name, sep, ref = text.partition("@")
    check_name(name, what="adapter name")
    if not sep:
        return Reference(name)
    if ref.isdigit():
        version = int(ref)
        if version < 1:
            raise InvalidInput(f"invalid version in {text!r}: versions start at 1")
        return Reference(name, version=version)
    if not ref:
        raise InvalidInput(
            f"invalid reference {text!r}: put a version or an alias after '@' "
            "(name@3, name@production)"
        )
    return Reference(name, alias=check_alias(ref))


def parse_dataset_reference(text: str) -> tuple[str, str]:
    """Split ``name@version`` of a dataset; both parts are required."""
    name, sep, version = text.partition("@")
    if not sep or not version:
        raise InvalidInput(f"invalid dataset reference {text!r}: use NAME@VERSION, e.g. fortunes@1")
    return check_name(name, what="dataset name"), check_name(version, what="dataset version")
