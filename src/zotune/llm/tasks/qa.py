"""MeZO's generation tasks: SQuAD and DROP (greedy answer, SQuAD-normalised F1)."""

from __future__ import annotations

from typing import Any, Mapping

from zotune.llm.tasks.base import Example, Task, hub_loader, register_task

Row = Mapping[str, Any]


def _answers(texts: list[str]) -> tuple[str, ...]:
    answers = tuple(dict.fromkeys(t.strip() for t in texts if t and t.strip()))
    if not answers:
        raise ValueError("the row has no non-empty answer")
    return answers


def build_squad(row: Row) -> Example:
    """``Title: <t>\\nContext: <c>\\nQuestion: <q>\\nAnswer:`` + `` <answer>\\n`` when training."""
    prompt = f"Title: {row['title']}\nContext: {row['context']}\nQuestion: {row['question']}\nAnswer:"
    return Example(prompt, answers=_answers(row["answers"]["text"]))


def build_drop(row: Row) -> Example:
    """``Passage: <p>\\nQuestion: <q>\\nAnswer:`` + `` <answer>\\n``; gold answers are the answer spans."""
    prompt = f"Passage: {row['passage']}\nQuestion: {row['question']}\nAnswer:"
    return Example(prompt, answers=_answers(row["answers_spans"]["spans"]))


register_task(Task("squad", "generation", "SQuAD v1.1 extractive QA (F1)", build_squad,
                   hub_loader("rajpurkar/squad", task="squad"), metric="f1", default_objective="lm",
                   source="hub: rajpurkar/squad"))
register_task(Task("drop", "generation", "DROP discrete reasoning QA (F1)", build_drop,
                   hub_loader("ucinlp/drop", task="drop"), metric="f1", default_objective="lm",
                   source="hub: ucinlp/drop"))
