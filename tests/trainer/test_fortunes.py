"""The fortunes topic dataset: cleaning, stratified splits, deterministic bytes."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from registry.errors import NotFound
from tests.trainer.builders import read_jsonl
from trainer.fortunes import (
    MAX_CHARS,
    SPLITS,
    TOPICS,
    assign_splits,
    build_fortunes_dataset,
    clean_quote,
    main,
)


def _write_topic_files(directory: Path, quotes_per_topic: dict[str, list[str]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for topic in TOPICS:
        quotes = quotes_per_topic.get(topic, [f"{topic} quote {i}" for i in range(20)])
        (directory / topic).write_text("\n%\n".join(quotes) + "\n%\n", encoding="utf-8")
    return directory


def test_fortunes_dataset_same_bytes_every_run(fortunes_file: Path, tmp_path: Path) -> None:
    again = build_fortunes_dataset(tmp_path / "again.jsonl")

    assert again.path.read_bytes() == fortunes_file.read_bytes()
    assert again.digest == "sha256:" + hashlib.sha256(fortunes_file.read_bytes()).hexdigest()


def test_fortunes_dataset_columns_and_labels(fortunes_file: Path) -> None:
    rows = read_jsonl(fortunes_file)

    assert len(rows) > 2500
    assert all(list(row) == ["text", "label", "split"] for row in rows)
    assert {row["label"] for row in rows} == set(TOPICS)
    assert {row["split"] for row in rows} == set(SPLITS)


def test_fortunes_dataset_texts_clean_and_bounded(fortunes_file: Path) -> None:
    texts = [row["text"] for row in read_jsonl(fortunes_file)]

    assert all(text == text.strip() and text for text in texts)
    assert max(len(text) for text in texts) <= MAX_CHARS
    assert not any("\x08" in text for text in texts)
    assert len(set(texts)) == len(texts)


def test_fortunes_split_stratified_per_topic(fortunes_file: Path) -> None:
    rows = read_jsonl(fortunes_file)
    counts = Counter((row["label"], row["split"]) for row in rows)

    for topic in TOPICS:
        total = sum(counts[(topic, split)] for split in SPLITS)
        assert counts[(topic, "validation")] == max(round(total * 0.1), 1), topic
        assert counts[(topic, "test")] == max(round(total * 0.1), 1), topic
        assert counts[(topic, "train")] == total - 2 * max(round(total * 0.1), 1), topic


def test_assign_splits_small_topic_keeps_every_split() -> None:
    names = assign_splits(3, rng=random.Random(0))

    assert sorted(names) == ["test", "train", "validation"]


def test_clean_quote_removes_overstrike() -> None:
    underlined = "_\x08I satisfies *_______\x08\x08\x08\x08\x08\x08\x08friends*"

    assert clean_quote(underlined) == "I satisfies *friends*"
    assert clean_quote("\x08 bold\n") == "bold"


def test_build_fortunes_skips_long_ambiguous_empty(tmp_path: Path) -> None:
    shared = "A quote filed under two topics."
    source = _write_topic_files(
        tmp_path / "fortunes",
        {
            "food": ["Eat.", "", "x" * 50, shared, "Eat."],
            "love": ["Love.", shared],
        },
    )

    summary = build_fortunes_dataset(tmp_path / "out.jsonl", source_dir=source, max_chars=40)
    rows = read_jsonl(summary.path)
    texts = {row["text"] for row in rows}

    assert summary.skipped_long == 1
    assert summary.skipped_ambiguous == 2
    assert shared not in texts
    assert "x" * 50 not in texts
    assert summary.labels["food"] == 1
    assert [row["text"] for row in rows if row["label"] == "food"] == ["Eat."]
    assert summary.rows == len(rows)


def test_build_fortunes_missing_directory_says_apt_get(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as raised:
        build_fortunes_dataset(tmp_path / "out.jsonl", source_dir=tmp_path / "absent")

    assert "apt-get install fortunes" in raised.value.detail
    assert not (tmp_path / "out.jsonl").exists()


def test_fortunes_command_writes_file(tmp_path: Path) -> None:
    source = _write_topic_files(tmp_path / "fortunes", {})
    out = tmp_path / "fortunes.jsonl"

    result = CliRunner().invoke(main, ["--out", str(out), "--source-dir", str(source)])

    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out)) == 20 * len(TOPICS)
    assert "sha256:" in result.output


def test_fortunes_command_missing_directory_exits_nonzero(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["--out", str(tmp_path / "f.jsonl"), "--source-dir", str(tmp_path / "absent")]
    )

    assert result.exit_code == 1
    assert "apt-get install fortunes" in result.output
