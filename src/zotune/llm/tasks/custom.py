"""Custom tasks from a user's JSONL or CSV file: a template plus label words, or an answer field.

The template is a Python format string over the row's fields, e.g. ``"{text} It was"`` with
label words ``negative=terrible,positive=great``. Every row is checked when the file is read, and
an error names the file and line, so a run never starts on data it would trip over later.
"""

from __future__ import annotations

import csv
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from zotune.llm.tasks.base import Example, Task, TaskDataError, fixed_split

__all__ = ["CustomTaskSpec", "parse_label_words", "read_rows", "make_custom_task"]

Row = Mapping[str, Any]
LINE = "__line__"
FILE = "__file__"


def parse_label_words(spec: str | list | tuple | Mapping | None) -> dict[str, str] | None:
    """Label words as a mapping from label value (as text) to word.

    Accepts ``"neg=terrible,pos=great"``, a mapping, or a plain list ``"terrible,great"`` in which
    case the labels are the indices ``0, 1, ...`` (and the words themselves are accepted as labels).
    """
    if spec is None or spec == "" or spec == []:
        return None
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
    else:
        items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s) for s in spec]
        if any(not s for s in items):
            raise ValueError(f"empty label word in {spec!r}")
        if all("=" in s for s in items):
            pairs = [tuple(p.strip() for p in s.split("=", 1)) for s in items]
        elif any("=" in s for s in items):
            raise ValueError(f"label words {spec!r} mix 'label=word' pairs and plain words")
        else:
            pairs = [(str(i), w) for i, w in enumerate(items)] + [(w, w) for w in items]
    mapping = dict(pairs)
    if len({w for w in mapping.values()}) < 2:
        raise ValueError(f"need at least two distinct label words, got {spec!r}")
    return mapping


def _fields(template: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f]
    except ValueError as exc:
        raise ValueError(f"malformed template {template!r}: {exc}") from exc


def read_rows(path: Path) -> list[dict]:
    """Rows of a ``.jsonl`` or ``.csv`` file, each tagged with its file and line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    rows: list[dict] = []
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as handle:
            for n, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TaskDataError(f"{path} line {n}: not valid JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise TaskDataError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
                rows.append({**row, LINE: n, FILE: str(path)})
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise TaskDataError(f"{path} line {reader.line_num}: wrong number of columns")
                rows.append({**row, LINE: reader.line_num, FILE: str(path)})
    else:
        raise ValueError(f"data file {path} must end in .jsonl or .csv (or .tsv)")
    if not rows:
        raise TaskDataError(f"{path}: no rows")
    return rows


def _join(prompt: str, text: str) -> str:
    # The continuation needs a separating space unless the template already ends in whitespace.
    return text if not prompt or prompt[-1].isspace() else " " + text


@dataclass(frozen=True)
class CustomTaskSpec:
    """What a user gives on the command line or in a config file to train on their own data."""

    data: str
    template: str
    label_words: Any = None
    label_field: str = "label"
    answer_field: str | None = None
    test_data: str | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        if (self.label_words is None) == (self.answer_field is None):
            raise ValueError("a custom task needs either label words (classification) or an answer field (generation)")
        _fields(self.template)


def make_custom_task(spec: CustomTaskSpec) -> Task:
    """Build a ``Task`` whose rows are read and checked when its pools are loaded."""
    words = parse_label_words(spec.label_words)
    fields = _fields(spec.template)
    classes = list(dict.fromkeys(words.values())) if words else []

    def where(row: Row) -> str:
        return f"{row.get(FILE, spec.data)} line {row.get(LINE, '?')}"

    def build(row: Row) -> Example:
        missing = [f for f in fields if f not in row]
        if missing:
            raise TaskDataError(f"{where(row)}: missing field(s) {', '.join(missing)} used by the template")
        prompt = spec.template.format(**{k: v for k, v in row.items() if k not in (LINE, FILE)})
        if words is not None:
            if spec.label_field not in row:
                raise TaskDataError(f"{where(row)}: missing label field {spec.label_field!r}")
            value = row[spec.label_field]
            key = str(int(value)) if isinstance(value, bool) else str(value)
            if key not in words:
                raise TaskDataError(
                    f"{where(row)}: label {value!r} is not among the candidates "
                    f"(accepted labels: {', '.join(repr(k) for k in words)})"
                )
            word = words[key]
            return Example(prompt, tuple(_join(prompt, w) for w in classes), (classes.index(word),))
        answer = row.get(spec.answer_field)
        if answer is None or not str(answer).strip():
            raise TaskDataError(f"{where(row)}: missing or empty answer field {spec.answer_field!r}")
        return Example(prompt, answers=(str(answer).strip(),))

    def load_pools(local_dir: Path | None = None) -> dict[str, list[Row]]:
        rows = read_rows(Path(spec.data))
        if spec.test_data:
            pools = {"train": rows, "test": read_rows(Path(spec.test_data))}
        else:
            pools = fixed_split(rows)
        for pool in pools.values():
            for row in pool:
                build(row)  # validate every row now, so errors name the line before any training
        return pools

    kind = "classification" if words else "generation"
    return Task(
        spec.name, kind, f"custom task from {spec.data}", build, load_pools,
        metric="accuracy" if words else "f1", default_objective="ce" if words else "lm",
        source=str(spec.data), label_words=tuple(classes),
    )
