"""Candidate-only scoring equals the full-vocabulary path; LM loss; generation; non-differentiable objectives."""

from __future__ import annotations

import itertools
import random
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

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
    grouped = Scorer(model, tok, group_overhead=0, packing=False)
    padded = Scorer(model, tok, group_overhead=None, packing=False)
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


# --- issue 15: the hand head equals the model's own logits, on every class it is used for ---

# Post-head constants far from the identity, so that a head which skipped them would score differently.
SCALED = {"granite": {"logits_scaling": 4.0}, "granitemoe": {"logits_scaling": 4.0},
          "granitemoeshared": {"logits_scaling": 4.0}, "granitemoehybrid": {"logits_scaling": 4.0},
          "cohere": {"logit_scale": 0.0625}, "cohere2": {"logit_scale": 0.0625},
          "gemma2": {"final_logit_softcapping": 0.5}, "gemma3_text": {"final_logit_softcapping": 0.5}}
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             head_dim=8, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=1,
             initializer_range=0.1,  # larger than the default 0.02: logits far enough from 0 for the caps to bite
             # MoE and GPT-style spellings; a config ignores what it does not use
             moe_intermediate_size=32, num_experts=4, num_local_experts=4, num_experts_per_tok=2,
             shared_expert_intermediate_size=32, shared_intermediate_size=32, ffn_dim=64, word_embed_proj_dim=32,
             n_embd=32, n_layer=2, n_head=4, n_positions=512, n_inner=64)
# configs the generic settings do not build
SPECIAL = {
    "gptj": dict(rotary_dim=4),
    "gpt_neo": dict(num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]], window_size=8),
    "falcon": dict(head_dim=None),
    "granitemoehybrid": dict(mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1, mamba_chunk_size=8,
                             layer_types=["mamba", "attention"]),
}


def tiny_causal_lm(class_name: str, **settings) -> torch.nn.Module:
    """A 2-layer model of the transformers class ``class_name`` built from its config (no download), with the
    vocabulary of the tiny tokenizer and the non-trivial post-head constants of ``SCALED`` unless overridden."""
    import transformers

    cls = getattr(transformers, class_name)
    model_type = cls.config_class.model_type
    kwargs = {**SMALL, **SPECIAL.get(model_type, {}), **SCALED.get(model_type, {}), **settings}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None: leave the config's own value
    config = transformers.AutoConfig.for_model(model_type, vocab_size=len(tiny_tokenizer()), **kwargs)
    torch.manual_seed(0)
    return cls(config).eval()


def plain_projection_scores(scorer: Scorer, ex: Example) -> torch.Tensor:
    """What the scorer computed before issue 15 for a single-token example: ``hidden @ W[rows].T (+ bias)`` with
    no post-head step (Gemma's cap aside)."""
    context, ids = scorer.single_token_split(ex)
    head = scorer.model.get_output_embeddings()
    h = scorer.hidden_at([context], [[len(context) - 1]])[0]
    out = h.float() @ head.weight[ids].float().T
    return out if head.bias is None else out + head.bias[ids].float()


def hand_head_classes() -> list[str]:
    from zotune.llm.objectives import _HAND_HEADS

    return sorted(_HAND_HEADS)


def assert_scores_equal_the_models_own(scorer: Scorer, single: list[Example], multi: list[Example]) -> None:
    """Single-token scores equal up to the log-partition, multi-token scores and both losses exactly."""
    model, tok = scorer.model, scorer.tok
    with torch.no_grad():
        fast, ref = scorer.candidate_scores(single), full_logits_scores(model, tok, single)
        for f, r in zip(fast, ref):
            torch.testing.assert_close(normalised(f), normalised(r), atol=1e-5, rtol=1e-5)
        loss_ref = torch.stack([F.cross_entropy(r[None], torch.tensor([e.gold[0]])) for r, e in zip(ref, single)])
        loss_ref = loss_ref.mean()
        torch.testing.assert_close(scorer.classification_loss(single), loss_ref, atol=1e-5, rtol=1e-5)
        for g, r in zip(scorer.candidate_scores(multi), full_logits_scores(model, tok, multi)):
            torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("class_name", hand_head_classes())
def test_every_listed_class_takes_the_fast_path_and_scores_like_its_own_forward(class_name):
    """The list of hand-head classes is the fast path's contract: each entry is checked here against the
    model's own forward, so a transformers release that changes one of these heads fails this test."""
    import transformers

    if not hasattr(transformers, class_name):  # a class newer than the transformers floor (.ci/floors: 4.56)
        pytest.skip(f"transformers {transformers.__version__} has no {class_name}")
    scorer = Scorer(tiny_causal_lm(class_name), tiny_tokenizer())
    assert not scorer.uses_model_logits
    assert_scores_equal_the_models_own(scorer, examples("sst2", 2), examples("copa", 1))


@pytest.mark.parametrize("class_name", ["GraniteForCausalLM", "GraniteMoeForCausalLM", "CohereForCausalLM",
                                        "Cohere2ForCausalLM", "Gemma2ForCausalLM"])
def test_scaled_and_capped_heads_match_where_the_plain_projection_does_not(class_name):
    """Granite divides logits by 4, Cohere multiplies them by 1/16, Gemma-2 caps them at 0.5: the scores and
    the LM loss equal the model's own, and the bare projection (the scorer before issue 15 for Granite and
    Cohere) is far from them, so these settings do test the post-head step."""
    model, tok = tiny_causal_lm(class_name), tiny_tokenizer()
    scorer = Scorer(model, tok)
    single = examples("sst2", 4)
    assert_scores_equal_the_models_own(scorer, single, examples("copa", 2))
    with torch.no_grad():
        ref = full_logits_scores(model, tok, single)
        gaps = [(normalised(plain_projection_scores(scorer, e)) - normalised(r)).abs().max()
                for e, r in zip(single, ref)]
    assert max(gaps) > 1e-2
    ex = examples("squad", 1)[0]
    full, start = scorer.encode(ex.prompt, ex.target)
    ids = torch.tensor([full])
    labels = ids.clone()
    labels[0, :start] = -100
    with torch.no_grad():
        torch.testing.assert_close(scorer.lm_loss([ex]), model(input_ids=ids, labels=labels).loss, atol=1e-5, rtol=1e-5)


class TemperedLlama(LlamaForCausalLM):
    """A user's subclass that changes its logits after the head, as an unknown architecture might."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 3.0 + 0.01 * torch.arange(out.logits.shape[-1], dtype=out.logits.dtype)
        return out


def test_unlisted_classes_are_scored_from_their_own_logits(monkeypatch):
    """A subclass (even of a listed class) may change its logits in ``forward``: it takes the model-logits
    path, with one warning per class, and scores like its own forward -- which the hand head would not."""
    from zotune.llm import objectives

    monkeypatch.setattr(objectives, "_WARNED_MODEL_LOGITS", set())
    base = tiny_model("llama")
    model = TemperedLlama(base.config).eval()
    model.load_state_dict(base.state_dict())
    scorer = Scorer(model, tiny_tokenizer())
    assert scorer.uses_model_logits and not Scorer(base, tiny_tokenizer()).uses_model_logits
    single = examples("sst2", 4)
    with pytest.warns(UserWarning, match="TemperedLlama.*own full-vocabulary logits"):
        with torch.no_grad():
            scorer.candidate_scores(single[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per class, not per call
        assert_scores_equal_the_models_own(scorer, single, examples("copa", 2))
        torch.testing.assert_close(  # grouped forwards give the one padded batch's scores on this path too
            Scorer(model, tiny_tokenizer(), group_overhead=0).lm_loss(examples("squad", 3)),
            Scorer(model, tiny_tokenizer(), group_overhead=None).lm_loss(examples("squad", 3)), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        ref = full_logits_scores(model, tiny_tokenizer(), single)
        gaps = [(normalised(plain_projection_scores(scorer, e)) - normalised(r)).abs().max()
                for e, r in zip(single, ref)]
    assert max(gaps) > 1e-2  # the hand head would have mis-scored it


def test_an_adapted_lm_head_is_scored_from_the_models_own_logits():
    """A LoRA adapter on the LM head makes it a peft layer whose ``weight`` is only the frozen base: the
    hand head would ignore the adapter, so such a model takes the model-logits path."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["lm_head"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    scorer = Scorer(model, tiny_tokenizer())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert scorer.uses_model_logits
        assert_scores_equal_the_models_own(scorer, examples("sst2", 4), examples("copa", 2))


def answer_text(tok, new_tokens: list[int]) -> str:
    return tok.decode(new_tokens, skip_special_tokens=True).lstrip(" ").split("\n", 1)[0].strip()


def test_greedy_by_forward_decodes_like_generate():
    """The cache-free decoder gives ``generate``'s greedy answers on a plain model."""
    model, tok = tiny_model("llama"), tiny_tokenizer()
    scorer = Scorer(model, tok)
    exs = examples("squad", 3)
    seqs = [scorer.encode(e.prompt, "")[0] for e in exs]
    with torch.no_grad():
        by_forward = scorer.greedy_by_forward(seqs, 8)
        assert [answer_text(tok, t) for t in by_forward] == scorer.generate(exs, max_new_tokens=8)
    assert all(1 <= len(t) <= 8 for t in by_forward)
    with pytest.raises(ValueError, match="max_new_tokens"):
        scorer.greedy_by_forward(seqs, 0)


def test_prefix_tuned_generation_keeps_the_prefix():
    """peft 0.21.2's ``generate`` under transformers 5.24 drops the prefix (it passes it as ``past_key_values``,
    which transformers ignores next to its own ``cache``): the answers must be those of the prefix-tuned
    forward, one token at a time, and not the base model's."""
    from zotune.llm.peft import PeftSettings, apply_peft

    tok = tiny_tokenizer()
    model = apply_peft(tiny_model("llama"), "prefix", PeftSettings(num_virtual_tokens=3), seed=7)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                param.mul_(5.0)  # a prefix far from the real tokens' keys, so that it changes the answers
    exs = examples("squad", 3)
    scorer = Scorer(model, tok)
    with torch.no_grad():
        got = scorer.generate(exs, max_new_tokens=6)
        ref = []
        for ex in exs:
            seq, new = scorer.encode(ex.prompt, "")[0], []
            for _ in range(6):
                ids = torch.tensor([seq + new])
                new.append(int(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax()))
                if new[-1] == tok.eos_token_id or "\n" in tok.decode(new, skip_special_tokens=True):
                    break
            ref.append(answer_text(tok, new))
        base = Scorer(tiny_model("llama"), tok).generate(exs, max_new_tokens=6)
    assert got == ref
    assert got != base
