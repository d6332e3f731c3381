"""Which adapter versions may be merged, judged from their records before any model loads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from cli.lifecycle import merge
from registry.errors import InvalidInput
from registry.services.merges import check_combination, check_merge_into_base


def version(ref: str, **changes: Any) -> dict[str, Any]:
    """A LoRA version record of the fields the merge checks read."""
    record: dict[str, Any] = {
        "ref": ref,
        "method": "lora",
        "task_type": "CAUSAL_LM",
        "rank": 4,
        "base_model": {"name": "char-llama"},
        "config": {"target_modules": ["q_proj", "v_proj"], "modules_to_save": None},
    }
    record.update(changes)
    return record


def rejection(parents: list[dict[str, Any]], combination: str = "linear", **options: Any) -> str:
    weights = options.pop("weights", [1.0 / len(parents)] * len(parents))
    with pytest.raises(InvalidInput) as rejected:
        check_combination(
            parents, combination=combination, weights=weights, density=options.get("density")
        )
    return rejected.value.detail


def test_combination_of_compatible_parents_passes() -> None:
    check_combination(
        [version("a@1"), version("b@1")], combination="ties", weights=[0.5, 0.5], density=0.5
    )


def test_combination_rejects_different_base_models() -> None:
    detail = rejection([version("a@1"), version("b@1", base_model={"name": "other-llama"})])
    assert "different base models" in detail
    assert "'other-llama'" in detail


def test_combination_rejects_different_task_types() -> None:
    detail = rejection([version("a@1"), version("b@1", task_type="SEQ_CLS")])
    assert "different task types" in detail


@pytest.mark.parametrize("method", ["ia3", "dora", "prompt-tuning"])
def test_combination_rejects_non_lora_method(method: str) -> None:
    detail = rejection([version("a@1"), version("b@1", method=method)])
    assert f"b@1 is {method}" in detail
    assert "plain LoRA" in detail


def test_combination_rejects_unequal_rank_pattern() -> None:
    wider = version("b@1", config={"target_modules": ["q_proj"], "rank_pattern": {"q_proj": 8}})
    detail = rejection([version("a@1"), wider], "dare_linear", density=0.5)
    assert "a@1 r=4" in detail
    assert "b@1 r=8" in detail


def test_cat_accepts_unequal_ranks() -> None:
    check_combination(
        [version("a@1"), version("b@1", rank=8)], combination="cat", weights=[1, 1], density=None
    )


def test_combination_rejects_two_saved_heads() -> None:
    head = {"target_modules": ["query"], "modules_to_save": ["classifier"]}
    detail = rejection(
        [
            version("a@1", task_type="SEQ_CLS", config=head),
            version("b@1", task_type="SEQ_CLS", config=head),
        ]
    )
    assert "'classifier'" in detail


def test_combination_rejects_mixed_target_module_kinds() -> None:
    regex = version("b@1", config={"target_modules": ".*proj"})
    assert "regex target_modules" in rejection([version("a@1"), regex])


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"weights": [1.0]}, "got 1 weights for 2 adapters"),
        ({"weights": [float("nan"), 1.0]}, "finite"),
        ({"density": 0.5}, "--density applies to"),
    ],
)
def test_combination_rejects_bad_options(options: dict[str, Any], expected: str) -> None:
    assert expected in rejection([version("a@1"), version("b@1")], **options)


@pytest.mark.parametrize("density", [None, 0.0, 1.5])
def test_ties_rejects_missing_or_bad_density(density: float | None) -> None:
    detail = rejection([version("a@1"), version("b@1")], "ties", density=density)
    assert "needs --density in (0, 1]" in detail


def test_combination_rejects_single_parent() -> None:
    assert "two or more" in rejection([version("a@1")])


def test_combination_rejects_unknown_method() -> None:
    assert "unknown merge method 'svd'" in rejection([version("a@1"), version("b@1")], "svd")


@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning", "p-tuning"])
def test_merge_into_base_rejects_soft_prompts(method: str) -> None:
    with pytest.raises(InvalidInput) as rejected:
        check_merge_into_base(version("a@1", method=method))
    assert "virtual tokens" in rejected.value.detail


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
def test_merge_into_base_accepts_weight_methods(method: str) -> None:
    check_merge_into_base(version("a@1", method=method))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["a@1", "b@1", "--method", "linear", "--adapter", "mix", "--out", "x"], "--out apply"),
        (["a@1", "b@1", "--method", "cat", "--adapter", "mix", "--upload"], "--upload apply"),
        (["a@1", "--out", "x", "--weights", "0.5"], "--weights apply to combining"),
        (["a@1", "--out", "x", "--density", "0.5"], "--density apply to combining"),
        (["a@1", "b@1", "--out", "x"], "takes one REF and --out DIR"),
        (["a@1", "b@1", "--method", "linear"], "--method needs --adapter"),
    ],
)
def test_merge_command_rejects_mixed_options(args: list[str], expected: str) -> None:
    # The URL is unreachable, so a case that got past the option checks would exit 7, not 2.
    env = {"ADAPTERREG_URL": "http://127.0.0.1:9", "ADAPTERREG_TOKEN": None}
    result = CliRunner().invoke(merge, [*args, "--json"], env=env)
    assert result.exit_code == 2, result.output
    assert expected in json.loads(result.stdout)["detail"]
