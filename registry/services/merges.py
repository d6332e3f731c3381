"""Merges: which adapter versions can be merged, and merged models as registry entities.

Two kinds of merge exist. ``merge_and_unload`` folds one adapter into its base
weights and gives a MergedModel (full weights). A combination (linear, cat,
ties, dare_linear, dare_ties, through peft's ``add_weighted_adapter``) mixes
several LoRA versions into a new adapter version, pushed like any other. The
checks here run on version records only, so an incompatible merge is rejected
before any model is loaded.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as DBIntegrityError
from sqlalchemy.orm import Session

from registry.db.models import (
    Adapter,
    AdapterVersion,
    BaseModelRecord,
    Blob,
    MergedModel,
    MergedModelParent,
)
from registry.errors import Conflict, InvalidInput, NotFound
from registry.services.actors import Actor
from registry.services.audit import record_event
from registry.services.files import check_file_entries
from registry.services.names import check_name, parse_reference
from registry.services.versions import get_version_row

log = logging.getLogger(__name__)

MERGE_AND_UNLOAD = "merge_and_unload"
COMBINATIONS = ("linear", "cat", "ties", "dare_linear", "dare_ties")
# add_weighted_adapter needs one shared rank for these; `cat` stacks ranks instead.
EQUAL_RANK_COMBINATIONS = frozenset({"linear", "ties", "dare_linear", "dare_ties"})
DENSITY_COMBINATIONS = frozenset({"ties", "dare_linear", "dare_ties"})
DTYPES = ("float32", "float16", "bfloat16")
# Methods that add virtual tokens rather than weight deltas, so nothing can be folded in.
PROMPT_METHODS = frozenset({"prompt-tuning", "prefix-tuning", "p-tuning"})


def check_merge_into_base(version: dict[str, Any]) -> None:
    """Raise InvalidInput unless the version's weights can be folded into its base."""
    method = version.get("method")
    if method in PROMPT_METHODS:
        raise InvalidInput(
            f"{version.get('ref')} is {method}: it learns virtual tokens that are prepended to "
            "the input instead of weight deltas, so there is nothing to merge into the base "
            "weights; serve it as an adapter"
        )


def check_combination(
    parents: list[dict[str, Any]],
    *,
    combination: str,
    weights: list[float],
    density: float | None,
) -> None:
    """Raise InvalidInput unless add_weighted_adapter can combine these version records.

    Checks the combination name, weights and density, then that the parents are
    LoRA adapters of one base model and task, with equal ranks where
    ``combination`` needs them and no classification head saved by two of them.
    """
    _check_combination_options(
        len(parents), combination=combination, weights=weights, density=density
    )
    first = parents[0]
    for parent in parents[1:]:
        _check_same(first, parent, ("base_model", "name"), "base model")
        _check_same(first, parent, ("task_type",), "task type")
    for parent in parents:
        if parent.get("method") != "lora":
            raise InvalidInput(
                f"{parent.get('ref')} is {parent.get('method')}; add_weighted_adapter combines "
                "plain LoRA adapters only (not DoRA, IA3 or prompt methods)"
            )
    if combination in EQUAL_RANK_COMBINATIONS:
        _check_equal_ranks(parents, combination)
    _check_target_module_kinds(parents)
    _check_modules_to_save(parents)


def _check_combination_options(
    count: int, *, combination: str, weights: list[float], density: float | None
) -> None:
    if combination not in COMBINATIONS:
        raise InvalidInput(
            f"unknown merge method {combination!r}; use one of {', '.join(COMBINATIONS)}"
        )
    if count < 2:
        raise InvalidInput(
            f"--method {combination} combines two or more adapter versions, got {count}; to "
            "merge one adapter into its base use `adapterreg merge REF --out DIR`"
        )
    if len(weights) != count:
        raise InvalidInput(f"got {len(weights)} weights for {count} adapters; give one per adapter")
    if not all(math.isfinite(weight) for weight in weights):
        raise InvalidInput(f"weights must be finite numbers, got {weights!r}")
    if combination in DENSITY_COMBINATIONS:
        if density is None or not 0 < density <= 1:
            raise InvalidInput(
                f"--method {combination} needs --density in (0, 1], the fraction of weights "
                f"kept; got {density!r}"
            )
    elif density is not None:
        raise InvalidInput(
            f"--density applies to {', '.join(sorted(DENSITY_COMBINATIONS))}, not {combination}"
        )


def _lookup(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _check_same(
    first: dict[str, Any], other: dict[str, Any], path: tuple[str, ...], what: str
) -> None:
    if _lookup(first, path) != _lookup(other, path):
        raise InvalidInput(
            f"{first.get('ref')} and {other.get('ref')} have different {what}s "
            f"({_lookup(first, path)!r} and {_lookup(other, path)!r}); only adapters of one "
            f"{what} can be merged"
        )


def _max_rank(parent: dict[str, Any]) -> int | None:
    config = parent.get("config") or {}
    ranks = [parent.get("rank"), *(config.get("rank_pattern") or {}).values()]
    numbers = [rank for rank in ranks if isinstance(rank, int)]
    return max(numbers) if numbers else None


def _check_equal_ranks(parents: list[dict[str, Any]], combination: str) -> None:
    ranks = {parent.get("ref"): _max_rank(parent) for parent in parents}
    if len(set(ranks.values())) != 1:
        listed = ", ".join(f"{ref} r={rank}" for ref, rank in ranks.items())
        raise InvalidInput(
            f"--method {combination} needs adapters of equal rank, got {listed}; use "
            "--method cat, which stacks ranks, or retrain with one rank"
        )


def _check_target_module_kinds(parents: list[dict[str, Any]]) -> None:
    kinds = {isinstance((p.get("config") or {}).get("target_modules"), str) for p in parents}
    if len(kinds) > 1:
        raise InvalidInput(
            "the adapters mix a regex target_modules with a list of module names, which "
            "add_weighted_adapter cannot combine; retrain them with the same kind"
        )


def _check_modules_to_save(parents: list[dict[str, Any]]) -> None:
    owners: dict[str, str] = {}
    for parent in parents:
        for module in (parent.get("config") or {}).get("modules_to_save") or []:
            if module in owners:
                raise InvalidInput(
                    f"{owners[module]} and {parent.get('ref')} both save a full copy of "
                    f"{module!r} (modules_to_save, e.g. a classification head); such copies "
                    "cannot be averaged, so these adapters cannot be combined"
                )
            owners[module] = str(parent.get("ref"))


def register_merged_model(session: Session, actor: Actor, spec: dict[str, Any]) -> dict[str, Any]:
    """Record a merged model with its parents, method, dtype, equivalence check and files.

    Raises InvalidInput for a malformed spec or a max_abs_diff above the tolerance,
    NotFound for an unknown parent or a missing uploaded blob, Conflict when the
    name is taken.
    """
    actor.require("writer")
    name = check_name(str(spec.get("name", "")), what="merged model name")
    parents = _resolve_parents(session, spec.get("parents"))
    method = _check_method(spec.get("method"))
    dtype = spec.get("dtype")
    if dtype not in DTYPES:
        raise InvalidInput(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
    max_abs_diff, tolerance = _check_equivalence(spec.get("max_abs_diff"), spec.get("tolerance"))
    files = check_file_entries(spec.get("files"), what=f"merged model {name!r}")
    uploaded = bool(spec.get("uploaded", False))
    if uploaded:
        _check_blobs_present(session, [entry.digest for entry in files], name)
    details = spec.get("details") or {}
    if not isinstance(details, dict):
        raise InvalidInput(f"details must be a JSON object, got {details!r}")
    row = MergedModel(
        name=name,
        base_model_id=parents[0][0].base_model_id,
        method=method,
        dtype=dtype,
        max_abs_diff=max_abs_diff,
        tolerance=tolerance,
        files=[entry.to_dict() for entry in files],
        total_size=sum(e.size for e in files),
        uploaded=uploaded,
        details=details,
        created_by=actor.name,
    )
    _insert_unique(session, row)
    for version, weight in parents:
        session.add(MergedModelParent(merged_model_id=row.id, version_id=version.id, weight=weight))
    session.flush()
    record_event(
        session,
        actor,
        "merged_model.registered",
        entity_type="merged_model",
        entity_id=name,
        details={
            "method": method,
            "dtype": dtype,
            "max_abs_diff": max_abs_diff,
            "parents": [_ref(session, version) for version, _ in parents],
        },
    )
    return merged_model_dict(session, row)


def _resolve_parents(session: Session, parents: Any) -> list[tuple[AdapterVersion, float | None]]:
    if not isinstance(parents, list) or not parents:
        raise InvalidInput(f"parents must be a non-empty list of {{ref, weight}}, got {parents!r}")
    resolved = []
    for item in parents:
        if not isinstance(item, dict) or not isinstance(item.get("ref"), str):
            raise InvalidInput(f"parent {item!r} must be an object with a string 'ref'")
        reference = parse_reference(item["ref"])
        if reference.version is None:
            raise InvalidInput(f"parent {item['ref']!r} must name a version (name@3)")
        weight = item.get("weight")
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float)):
            raise InvalidInput(f"parent weight {weight!r} must be a number")
        resolved.append((get_version_row(session, reference), weight))
    bases = {version.base_model_id for version, _ in resolved}
    if len(bases) > 1:
        raise InvalidInput("the parents of a merged model must share one base model")
    return resolved


def _check_method(method: Any) -> str:
    if method != MERGE_AND_UNLOAD and method not in COMBINATIONS:
        raise InvalidInput(
            f"unknown merge method {method!r}; use {MERGE_AND_UNLOAD} or one of "
            f"{', '.join(COMBINATIONS)}"
        )
    return str(method)


def _check_equivalence(max_abs_diff: Any, tolerance: Any) -> tuple[float | None, float | None]:
    for key, value in (("max_abs_diff", max_abs_diff), ("tolerance", tolerance)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise InvalidInput(f"{key} must be a finite number >= 0, got {value!r}")
    if max_abs_diff is not None and tolerance is not None and max_abs_diff > tolerance:
        raise InvalidInput(
            f"merged outputs differ from adapter-on-base by {max_abs_diff:.3g}, above the "
            f"tolerance {tolerance:.3g}; such a merge is not registered"
        )
    return max_abs_diff, tolerance


def _check_blobs_present(session: Session, digests: list[str], name: str) -> None:
    present = set(session.scalars(select(Blob.digest).where(Blob.digest.in_(digests))))
    missing = [digest for digest in digests if digest not in present]
    if missing:
        raise NotFound(
            f"merged model {name!r} declares uploaded files whose blobs are missing: "
            f"{missing[:5]}; upload them first"
        )


def _insert_unique(session: Session, row: MergedModel) -> None:
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except DBIntegrityError:
        raise Conflict(
            f"a merged model named {row.name!r} already exists; register this one under "
            "another name"
        ) from None


def get_merged_model_row(session: Session, name: str) -> MergedModel:
    row = session.scalar(select(MergedModel).where(MergedModel.name == name))
    if row is None:
        raise NotFound(
            f"merged model {name!r} not found; create it with `adapterreg merge REF --out DIR "
            "--register NAME`"
        )
    return row


def get_merged_model(session: Session, name: str) -> dict[str, Any]:
    return merged_model_dict(session, get_merged_model_row(session, name))


def list_merged_models(session: Session) -> list[dict[str, Any]]:
    rows = session.scalars(select(MergedModel).order_by(MergedModel.name))
    return [merged_model_dict(session, row) for row in rows]


def _ref(session: Session, version: AdapterVersion) -> str:
    adapter = session.get(Adapter, version.adapter_id)
    assert adapter is not None
    return f"{adapter.name}@{version.version}"


def merged_model_dict(session: Session, row: MergedModel) -> dict[str, Any]:
    base = session.get(BaseModelRecord, row.base_model_id)
    assert base is not None
    parents = session.execute(
        select(MergedModelParent, AdapterVersion)
        .join(AdapterVersion, AdapterVersion.id == MergedModelParent.version_id)
        .where(MergedModelParent.merged_model_id == row.id)
        .order_by(AdapterVersion.id)
    ).all()
    return {
        "name": row.name,
        "base_model": {"name": base.name, "fingerprint": base.fingerprint},
        "method": row.method,
        "dtype": row.dtype,
        "max_abs_diff": row.max_abs_diff,
        "tolerance": row.tolerance,
        "parents": [
            {
                "ref": _ref(session, version),
                "weight": edge.weight,
                "digest": version.manifest_digest,
            }
            for edge, version in parents
        ],
        "files": row.files,
        "total_size": row.total_size,
        "uploaded": row.uploaded,
        "details": row.details,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
    }
