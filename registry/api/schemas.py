"""Request bodies of the API. Responses are the services' plain dicts."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileEntryIn(Strict):
    path: str = Field(description="Path relative to the model or adapter directory")
    size: int = Field(ge=0, description="Size in bytes")
    digest: str = Field(description="sha256:<64 hex digits>")


class MissingBlobsIn(Strict):
    digests: list[str] = Field(max_length=1000)


class UploadIn(Strict):
    digest: str
    size: int = Field(ge=0, description="Total size of the blob in bytes")


class BaseModelIn(Strict):
    name: str
    source_uri: str = ""
    revision: str | None = None
    architecture: str = "unknown"
    fingerprint: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    manifest: dict[str, Any]
    files: list[FileEntryIn]
    uploaded: bool = False


class DatasetIn(Strict):
    name: str
    version: str | None = None
    uri: str = ""
    digest: str
    size: int = Field(ge=0)
    format: str
    row_count: int = Field(ge=0)
    columns: list[str]
    label_set: list[Any] | None = None
    splits: dict[str, int] = Field(default_factory=dict)
    uploaded: bool = False


class ParentIn(Strict):
    ref: str = Field(description="name@version of the parent")
    relation: str = "derived"
    weight: float | None = None


class VersionIn(Strict):
    base_model: str
    files: list[FileEntryIn]
    datasets: list[str] = Field(default_factory=list, description="NAME@VERSION of each dataset")
    run: dict[str, Any] | None = None
    parents: list[ParentIn] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict)
    description: str | None = None


class AliasIn(Strict):
    version: int = Field(ge=1)
    reason: str | None = None


class RollbackIn(Strict):
    reason: str = Field(min_length=1)


class TokenIn(Strict):
    name: str
    role: str
