"""Build the fortunes topic dataset: one JSONL file with text, label and split columns.

The source is the Debian package ``fortunes``, whose files under
/usr/share/games/fortunes hold quotes separated by lines that contain only
``%``. Each quote from one of the TOPICS files becomes an example labelled with
that file's name. The split is stratified: every topic contributes about 80% of
its quotes to ``train`` and 10% each to ``validation`` and ``test``, chosen with
a fixed seed, so the same inputs always give the same bytes.

    python -m trainer.fortunes --out fortunes.jsonl
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import click

from registry.errors import InvalidInput, NotFound

FORTUNES_DIR = Path("/usr/share/games/fortunes")
TOPICS = ("computers", "food", "law", "science", "sports", "medicine", "politics", "love")
SPLITS = ("train", "validation", "test")
# Fractions of each topic's quotes that go to validation and test; train takes the rest.
VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.1
DEFAULT_SEED = 20240501
# Quotes longer than this, in characters after cleaning, are left out. About 3% of
# the quotes are longer: mostly stories and poems, whose topic rarely shows in the
# first 64 tokens that a classifier of this dataset usually sees.
MAX_CHARS = 1000

# A separator line between two quotes.
_SEPARATOR = re.compile(r"^%[ \t]*$", flags=re.MULTILINE)
# One overstruck character: "c\b" is how the files print bold or underlined text.
_OVERSTRIKE = re.compile(r"[^\x08]\x08")


@dataclass(frozen=True)
class FortunesSummary:
    """Summary of what ``build_fortunes_dataset`` wrote."""

    path: Path
    digest: str  # "sha256:<hex>" of the file
    rows: int
    # Split name -> row count, and topic -> row count.
    splits: dict[str, int]
    labels: dict[str, int]
    # Quotes left out: longer than MAX_CHARS, or found under more than one topic.
    skipped_long: int
    skipped_ambiguous: int


def clean_quote(raw: str) -> str:
    """Remove overstrike sequences (``c\\b``) and surrounding whitespace from one quote."""
    text = raw
    while "\x08" in text:
        cleaned = _OVERSTRIKE.sub("", text)
        if cleaned == text:
            # A backspace at the start has no character to erase.
            cleaned = text.replace("\x08", "")
        text = cleaned
    return text.strip()


def read_quotes(path: Path) -> list[str]:
    """Return the non-empty, cleaned quotes of one fortune file, in file order."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    quotes = (clean_quote(part) for part in _SEPARATOR.split(raw))
    return [quote for quote in quotes if quote]


def collect_examples(
    source_dir: Path, *, max_chars: int = MAX_CHARS
) -> tuple[dict[str, list[str]], Counter[str]]:
    """Read every topic's quotes; return them by topic, and the counts of skipped quotes.

    A quote found in more than one topic file has no single label, so it is left
    out everywhere. A quote repeated inside one file is kept once.
    """
    if not source_dir.is_dir():
        raise NotFound(
            f"fortune directory {str(source_dir)!r} not found; install the fortunes with "
            "`apt-get install fortunes` (Debian, Ubuntu) or pass --source-dir"
        )
    by_topic: dict[str, list[str]] = {}
    skipped: Counter[str] = Counter()
    for topic in TOPICS:
        path = source_dir / topic
        if not path.is_file():
            raise NotFound(
                f"fortune file {str(path)!r} not found; install the fortunes with "
                "`apt-get install fortunes`"
            )
        quotes = list(dict.fromkeys(read_quotes(path)))
        kept = [quote for quote in quotes if len(quote) <= max_chars]
        skipped["long"] += len(quotes) - len(kept)
        by_topic[topic] = kept
    topics_of: dict[str, set[str]] = {}
    for topic, quotes in by_topic.items():
        for quote in quotes:
            topics_of.setdefault(quote, set()).add(topic)
    ambiguous = {quote for quote, topics in topics_of.items() if len(topics) > 1}
    for topic, quotes in by_topic.items():
        skipped["ambiguous"] += sum(quote in ambiguous for quote in quotes)
        by_topic[topic] = [quote for quote in quotes if quote not in ambiguous]
    return by_topic, skipped


def assign_splits(count: int, *, rng: random.Random) -> list[str]:
    """Return a split name for each of ``count`` examples of one topic.

    Validation and test each get ``round(count * fraction)`` examples, at least
    one when the topic has three or more; the positions are drawn from ``rng``.
    """
    validation = round(count * VALIDATION_FRACTION)
    test = round(count * TEST_FRACTION)
    if count >= 3:
        validation, test = max(validation, 1), max(test, 1)
    names = ["validation"] * validation + ["test"] * test
    names += ["train"] * (count - len(names))
    rng.shuffle(names)
    return names


def build_rows(by_topic: dict[str, list[str]], *, seed: int = DEFAULT_SEED) -> list[dict[str, str]]:
    """Return the rows (text, label, split) grouped by topic in TOPICS order."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for topic in TOPICS:
        quotes = by_topic.get(topic, [])
        for quote, split in zip(quotes, assign_splits(len(quotes), rng=rng), strict=True):
            rows.append({"text": quote, "label": topic, "split": split})
    return rows


def build_fortunes_dataset(
    out: Path,
    *,
    source_dir: Path = FORTUNES_DIR,
    seed: int = DEFAULT_SEED,
    max_chars: int = MAX_CHARS,
) -> FortunesSummary:
    """Write the fortunes topic dataset to ``out`` as JSONL and describe what was written.

    Raises NotFound when the fortune files are missing and InvalidInput on a
    non-positive ``max_chars``.
    """
    if max_chars < 1:
        raise InvalidInput(f"max_chars must be a positive number of characters, got {max_chars!r}")
    by_topic, skipped = collect_examples(source_dir, max_chars=max_chars)
    rows = build_rows(by_topic, seed=seed)
    payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(payload)
    return FortunesSummary(
        path=out,
        digest="sha256:" + hashlib.sha256(payload).hexdigest(),
        rows=len(rows),
        splits={split: sum(row["split"] == split for row in rows) for split in SPLITS},
        labels={topic: len(by_topic[topic]) for topic in TOPICS},
        skipped_long=skipped["long"],
        skipped_ambiguous=skipped["ambiguous"],
    )


@click.command(name="fortunes")
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSONL file to write.",
)
@click.option(
    "--source-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=FORTUNES_DIR,
    show_default=True,
    help="Directory of the fortune files.",
)
@click.option(
    "--seed",
    type=int,
    default=DEFAULT_SEED,
    show_default=True,
    help="Seed of the stratified train/validation/test split.",
)
@click.option(
    "--max-chars",
    type=int,
    default=MAX_CHARS,
    show_default=True,
    help="Leave out quotes longer than this many characters.",
)
def main(out: Path, source_dir: Path, seed: int, max_chars: int) -> None:
    """Build the fortunes topic dataset (text, label, split) as one JSONL file."""
    try:
        summary = build_fortunes_dataset(out, source_dir=source_dir, seed=seed, max_chars=max_chars)
    except (InvalidInput, NotFound) as error:
        raise click.ClickException(error.detail) from error
    splits = ", ".join(f"{name} {count}" for name, count in summary.splits.items())
    click.echo(f"wrote {summary.rows} rows to {summary.path} ({splits}); {summary.digest}")
    click.echo(
        f"left out {summary.skipped_long} quotes over {max_chars} characters and "
        f"{summary.skipped_ambiguous} found under several topics"
    )


if __name__ == "__main__":
    main()
