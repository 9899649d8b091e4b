"""Every task's template and metric on small fixtures in the hub schema; the data protocol; custom tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from zotune.llm.metrics import exact_match, f1_score, max_over_answers, normalize_answer
from zotune.llm.tasks import (
    CustomTaskSpec, Example, TaskDataError, available_tasks, get_task, make_custom_task, parse_label_words, sample_splits,
)

FIX = Path(__file__).parent / "fixtures"


def first_example(name: str) -> Example:
    task = get_task(name)
    pools = task.load_pools(FIX / "tasks" / name)
    return task.build(pools["train"][0])


# (task, expected prompt, candidates, gold, metric, kind) for the first fixture row of each task
EXPECTED = [
    ("sst2", "a gorgeous , witty , seductive movie . It was", (" terrible", " great"), (1,), "accuracy", "classification"),
    ("mr", "a triumph of a film , moving and funny It was", (" terrible", " great"), (1,), "accuracy", "classification"),
    ("rte", 'The cat sat on the mat.\nDoes this mean that "A cat is on a mat." is true? Yes or No?\n',
     ("Yes", "No"), (0,), "accuracy", "classification"),
    ("cb", 'Suppose She said the meeting was over. Can we infer that "the meeting was over"? Yes, No, or Maybe?\n',
     ("Yes", "No", "Maybe"), (0,), "accuracy", "classification"),
    ("boolq-hub", "On a clear day the sky looks blue. Is the sky blue on a clear day?\n", ("Yes", "No"), (0,),
     "accuracy", "classification"),
    ("boolq", "The sky is blue. Is the sky blue?\n", ("Yes", "No"), (0,), "accuracy", "classification"),
    ("wsc", 'Mark told Pete many lies about himself, which Pete included in his book.\nIn the previous sentence, '
            'does the pronoun "he" refer to Mark? Yes or No?\n', ("No", "Yes"), (0,), "accuracy", "classification"),
    ("wic", 'Does the word "bank" have the same meaning in these two sentences? Yes, No?\n'
            "He sat on the river bank.\nShe went to the bank to get cash.\n", ("No", "Yes"), (0,), "accuracy",
     "classification"),
    ("multirc", 'Tom has two dogs and a cat.\nQuestion: How many dogs does Tom have?\nI found this answer "Two". '
                "Is that correct? Yes or No?\n", ("No", "Yes"), (1,), "accuracy", "classification"),
    ("copa", "My body cast a shadow over the grass because", (" the sun was rising.", " the grass was cut."), (0,),
     "accuracy", "multiple_choice"),
    ("record", "Obama met Merkel in Berlin.\n- The two leaders talked trade\n-",
     (" Obama said the talks went well.", " Merkel said the talks went well.", " Berlin said the talks went well."),
     (1,), "accuracy", "multiple_choice"),
    ("bbc", "Shares rise at bank. Shares in the bank rose after profits beat forecasts.\nTopic:",
     (" business", " entertainment", " politics", " sport", " technology"), (0,), "accuracy", "classification"),
    ("piqa", "Question: How do you open a jar?\nAnswer:", (" Twist the lid.", " Hit it with a fish."), (0,), "accuracy",
     "multiple_choice"),
]


@pytest.mark.parametrize("name,prompt,candidates,gold,metric,kind", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_candidate_task_templates(name, prompt, candidates, gold, metric, kind):
    ex = first_example(name)
    task = get_task(name)
    assert ex.prompt == prompt
    assert ex.candidates == candidates
    assert ex.gold == gold
    assert task.metric == metric and task.kind == kind
    assert ex.target == candidates[gold[0]]


def test_generation_templates():
    squad = first_example("squad")
    assert squad.prompt == "Title: France\nContext: Paris is the capital of France.\nQuestion: What is the capital of France?\nAnswer:"
    assert squad.answers == ("Paris",)  # duplicates removed
    assert squad.target == " Paris\n"
    drop = first_example("drop")
    assert drop.prompt == ("Passage: The Bears scored 7 points and the Lions scored 3.\n"
                           "Question: How many more points did the Bears score?\nAnswer:")
    assert drop.answers == ("4",)
    for name in ("squad", "drop"):
        assert get_task(name).metric == "f1" and get_task(name).kind == "generation"


def test_copa_effect_keeps_capital_i_and_record_multiple_gold():
    task = get_task("copa")
    rows = task.load_pools(FIX / "tasks" / "copa")["train"]
    second, third = task.build(rows[1]), task.build(rows[2])
    assert second.candidates[1] == " I got a hole in my sock."  # "I" is not lower-cased
    assert third.prompt.endswith(" so")
    record = get_task("record")
    ex = record.build(record.load_pools(FIX / "tasks" / "record")["train"][2])
    assert len(ex.candidates) == 2  # duplicate entity removed
    assert ex.gold == (1,)


def test_every_task_builds_all_fixture_rows():
    for name in available_tasks():
        task = get_task(name)
        pools = task.load_pools(FIX / "tasks" / name)
        examples = task.examples(pools["train"] + pools["test"])
        assert examples and all(ex.prompt for ex in examples)
        if task.kind == "generation":
            assert all(ex.answers and not ex.candidates for ex in examples)
        else:
            assert all(len(ex.candidates) >= 2 and ex.gold for ex in examples)


def test_unknown_task_lists_known():
    with pytest.raises(ValueError, match="unknown task 'nope'.*known tasks: bbc, boolq"):
        get_task("nope")


def test_hidden_test_labels_are_rejected():
    with pytest.raises(ValueError, match="not among"):
        get_task("rte").build({"premise": "a", "hypothesis": "b", "label": -1})


def test_sample_splits_protocol():
    task = get_task("mr")
    pools = {"train": [{"sentence": f"s{i}", "label": i % 2} for i in range(50)],
             "test": [{"sentence": f"t{i}", "label": i % 2} for i in range(30)]}
    a = sample_splits(task, 20, 10, 15, seed=3, pools=pools)
    b = sample_splits(task, 20, 10, 15, seed=3, pools=pools)
    c = sample_splits(task, 20, 10, 15, seed=4, pools=pools)
    assert (len(a.train), len(a.dev), len(a.test)) == (20, 10, 15)
    assert a == b and a.train != c.train
    assert not {e.prompt for e in a.train} & {e.prompt for e in a.dev}
    assert all(e.prompt.startswith("t") for e in a.test)
    with pytest.warns(UserWarning, match="num_train \\+ num_dev"):
        small = sample_splits(task, 45, 10, 5, seed=0, pools=pools)
    assert (len(small.train), len(small.dev)) == (40, 10)


def test_metrics():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert f1_score("the cat sat", "a cat sat down") == pytest.approx(2 * (2 / 2) * (2 / 3) / (1 + 2 / 3))
    assert f1_score("dog", "cat") == 0.0
    assert exact_match("Paris.", "paris") == 1.0
    assert max_over_answers(f1_score, "two dogs", ["two", "two dogs"]) == 1.0


# --- custom tasks ---

def custom(**kw) -> CustomTaskSpec:
    base = dict(data=str(FIX / "custom" / "reviews.jsonl"), template="Review: {review}\nSentiment:",
                label_words="neg=negative,pos=positive", label_field="sentiment")
    return CustomTaskSpec(**{**base, **kw})


@pytest.mark.parametrize("data", ["reviews.jsonl", "reviews.csv"])
def test_custom_classification_task(data):
    task = make_custom_task(custom(data=str(FIX / "custom" / data)))
    splits = sample_splits(task, 6, 2, 2, seed=0)
    ex = splits.train[0]
    assert ex.prompt.startswith("Review: ") and ex.prompt.endswith("\nSentiment:")
    assert ex.candidates == (" negative", " positive")
    assert task.kind == "classification" and task.metric == "accuracy"
    assert len(splits.test) == 2


def test_custom_generation_task_and_label_word_forms():
    task = make_custom_task(CustomTaskSpec(data=str(FIX / "custom" / "qa.jsonl"), template="Q: {question}\nA:",
                                           answer_field="answer"))
    ex = task.build({"question": "What color is the sky?", "answer": "blue"})
    assert ex.answers == ("blue",) and ex.target == " blue\n" and task.metric == "f1"
    assert parse_label_words("terrible,great") == {"0": "terrible", "1": "great", "terrible": "terrible", "great": "great"}
    assert parse_label_words({"a": "x", "b": "y"}) == {"a": "x", "b": "y"}
    with pytest.raises(ValueError, match="two distinct"):
        parse_label_words("same,same")


def test_custom_errors_name_the_line(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"review": "ok", "sentiment": "pos"}\n{"review": oops}\n')
    with pytest.raises(TaskDataError, match="bad.jsonl line 2: not valid JSON"):
        make_custom_task(custom(data=str(bad_json))).load_pools(None)
    bad_label = tmp_path / "label.jsonl"
    bad_label.write_text('{"review": "ok", "sentiment": "pos"}\n{"review": "meh", "sentiment": "neutral"}\n')
    with pytest.raises(TaskDataError, match="label.jsonl line 2: label 'neutral' is not among the candidates"):
        make_custom_task(custom(data=str(bad_label))).load_pools(None)
    missing = tmp_path / "missing.csv"
    missing.write_text("text,sentiment\nhello,pos\n")
    with pytest.raises(TaskDataError, match="missing.csv line 2: missing field\\(s\\) review"):
        make_custom_task(custom(data=str(missing))).load_pools(None)
    with pytest.raises(FileNotFoundError, match="data file not found"):
        make_custom_task(custom(data=str(tmp_path / "nope.jsonl"))).load_pools(None)
    with pytest.raises(ValueError, match="either label words"):
        CustomTaskSpec(data="x.jsonl", template="{a}")
