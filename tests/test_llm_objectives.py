"""Candidate-only scoring equals the full-vocabulary path; LM loss; generation; non-differentiable objectives."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fixtures.tiny import ARCHS, tiny_model, tiny_tokenizer
from zotune.llm.objectives import Scorer, full_logits_scores, group_overhead_for, length_groups, resolve_objective
from zotune.llm.tasks import Example, get_task, sample_splits

FIX = Path(__file__).parent / "fixtures"


def examples(name: str, n: int = 3) -> list[Example]:
    return sample_splits(get_task(name), n, 0, 1, local_dir=FIX / "tasks" / name).train


def normalised(scores: torch.Tensor) -> torch.Tensor:
    return scores - scores.logsumexp(0)


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_single_token_path_equals_full_logits(arch):
    model, tok = tiny_model(arch), tiny_tokenizer()
    exs = examples("sst2", 4)
    scorer = Scorer(model, tok)
    assert all(scorer.single_token_candidates(e) is not None for e in exs)  # the fast path is taken
    with torch.no_grad():
        fast = scorer.candidate_scores(exs)
        ref = full_logits_scores(model, tok, exs)
        loss_fast = scorer.classification_loss(exs)
    loss_ref = torch.stack([F.cross_entropy(r[None], torch.tensor([e.gold[0]])) for r, e in zip(ref, exs)]).mean()
    for f, r in zip(fast, ref):
        # equal up to the per-example log-partition, which cancels in softmax and argmax
        torch.testing.assert_close(normalised(f), normalised(r), atol=1e-5, rtol=1e-5)
        assert int(f.argmax()) == int(r.argmax())
    torch.testing.assert_close(loss_fast, loss_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_truncated_prompts_keep_the_fast_path_and_its_scores(arch):
    """Cut from the left, prompt + candidate lose one more token than the prompt alone; the fast path
    must condition on the same context as the slow path, and must still be taken."""
    model, tok = tiny_model(arch), tiny_tokenizer()
    exs = examples("sst2", 4)
    width = min(len(Scorer(model, tok).encode(e.prompt, "")[0]) for e in exs)
    scorer = Scorer(model, tok, max_length=width - 2)  # every prompt is cut
    assert all(scorer.single_token_candidates(e) is not None for e in exs)
    with torch.no_grad():
        fast = scorer.candidate_scores(exs)
        slow = scorer.candidate_scores(exs, fast=False)
    for f, r in zip(fast, slow):
        torch.testing.assert_close(normalised(f), normalised(r), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("task", ["copa", "record", "piqa"])
def test_multi_token_path_equals_full_logits(arch, task):
    model, tok = tiny_model(arch), tiny_tokenizer()
    exs = examples(task)
    scorer = Scorer(model, tok)
    assert all(scorer.single_token_candidates(e) is None for e in exs)
    with torch.no_grad():
        got = scorer.candidate_scores(exs)
        ref = full_logits_scores(model, tok, exs)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)  # exact mean log-probs here


def test_gemma_softcapping_is_applied():
    tok = tiny_tokenizer()
    exs = examples("sst2", 2)
    capped = tiny_model("gemma3", softcap=0.5)  # a tiny cap changes the scores a lot
    with torch.no_grad():
        fast = Scorer(capped, tok).candidate_scores(exs)
        ref = full_logits_scores(capped, tok, exs)
    for f, r in zip(fast, ref):
        torch.testing.assert_close(normalised(f), normalised(r), atol=1e-5, rtol=1e-5)


def test_lm_loss_matches_transformers_labels_loss():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    ex = examples("squad", 1)[0]
    scorer = Scorer(model, tok)
    full, start = scorer.encode(ex.prompt, ex.target)
    ids = torch.tensor([full])
    labels = ids.clone()
    labels[0, :start] = -100  # only the answer tokens are trained
    with torch.no_grad():
        ref = model(input_ids=ids, labels=labels).loss
        got = scorer.lm_loss([ex])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_encode_splits_at_the_prompt_and_truncates_from_the_left():
    tok = tiny_tokenizer()
    scorer = Scorer(tiny_model("llama"), tok, max_length=6)
    full, start = scorer.encode("one two three four five six seven It was", " great")
    assert len(full) == 6 and full[-1] == tok(" great").input_ids[0] and start == 5
    with pytest.raises(ValueError, match="max_length"):
        Scorer(tiny_model("llama"), tok, max_length=2).encode("It was", " great great great great")


def test_generation_stops_at_newline_and_nondiff_objectives():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    scorer = Scorer(model, tok)
    exs = examples("squad", 2)
    answers = scorer.generate(exs, max_new_tokens=8)
    assert len(answers) == 2 and all("\n" not in a for a in answers)
    loss = scorer.loss(exs, "f1", max_new_tokens=8)
    assert -1.0 <= float(loss) <= 0.0
    cls = examples("sst2", 4)
    preds = scorer.predictions(cls)
    acc = sum(p in e.gold for p, e in zip(preds, cls)) / len(cls)
    assert float(scorer.loss(cls, "accuracy")) == pytest.approx(-acc)


def test_resolve_objective():
    assert resolve_objective("auto", "classification", "ce") == "ce"
    assert resolve_objective("f1", "generation", "lm") == "f1"
    with pytest.raises(ValueError, match="needs candidates"):
        resolve_objective("ce", "generation", "lm")
    with pytest.raises(ValueError, match="unknown objective"):
        resolve_objective("mse", "classification", "ce")


def padded_tokens(lengths: list[int], groups: list[list[int]]) -> int:
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def test_length_groups_is_the_cheapest_split_of_the_sorted_batch():
    rng = random.Random(3)
    for _ in range(40):
        lengths = [rng.randint(3, 60) for _ in range(rng.randint(1, 9))]
        overhead = rng.choice([0, 5, 40, 200])
        groups = length_groups(lengths, overhead)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # a partition
        order = [i for g in groups for i in g]
        assert [lengths[i] for i in order] == sorted(lengths)  # contiguous runs of the sorted batch
        # brute force over every cut of the sorted order
        ranked = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        best = min(
            padded_tokens(lengths, [ranked[a:b] for a, b in zip((0, *cuts), (*cuts, len(ranked)))]) + overhead * (len(cuts) + 1)
            for k in range(len(ranked))
            for cuts in itertools.combinations(range(1, len(ranked)), k)
        )
        assert padded_tokens(lengths, groups) + overhead * len(groups) == best
    assert padded_tokens([5, 9, 9, 30], length_groups([5, 9, 9, 30], 0)) == 53  # no padding at all
    assert length_groups([5, 9, 9, 30], 10**6) == [[0, 1, 2, 3]]  # one padded batch
    with pytest.raises(ValueError):
        length_groups([3], -1)


@pytest.mark.parametrize("arch", ARCHS)
def test_length_groups_change_no_score(arch):
    """Right padding under the attention mask: grouped forwards give the one padded batch's scores."""
    model, tok = tiny_model(arch), tiny_tokenizer()
    exs = examples("sst2", 8) + examples("copa", 3)  # single- and multi-token candidates, lengths spread
    grouped, padded = Scorer(model, tok, group_overhead=0), Scorer(model, tok, group_overhead=None)
    lengths = [len(grouped.encode(e.prompt, "")[0]) for e in exs]
    assert len(length_groups(lengths, 0)) > 2  # the batch really is split
    with torch.no_grad():
        for got, ref in zip(grouped.candidate_scores(exs), padded.candidate_scores(exs)):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grouped.classification_loss(exs), padded.classification_loss(exs), atol=1e-5, rtol=1e-5)
        squad = examples("squad", 3)
        torch.testing.assert_close(grouped.lm_loss(squad), padded.lm_loss(squad), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        Scorer(model, tok, group_overhead=-1)


def test_auto_group_overhead_scales_with_the_model():
    """96 tokens at SmolLM2-135M's size (where it was measured); a tiny model never splits its batch."""
    tiny = tiny_model("llama")
    assert Scorer(tiny, tiny_tokenizer()).group_overhead == group_overhead_for(tiny) > 10**5
    reference = torch.nn.Linear(134_515_008 // 1000, 1000, bias=False, device="meta")  # SmolLM2-135M's size
    assert group_overhead_for(reference) == 96
    assert length_groups([5, 30, 64, 64], group_overhead_for(tiny)) == [[0, 1, 2, 3]]
