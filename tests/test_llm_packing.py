"""Packed rows (no padding, block-diagonal causal mask) give the scores and losses of the one padded batch."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
from fixtures.tiny import tiny_model, tiny_tokenizer
from test_llm_objectives import examples, tiny_causal_lm

from zotune.llm.objectives import Scorer
from zotune.llm.packing import PACKABLE, build_packed, pack_rows, packing_unsupported, packing_unsupported_by_config
from zotune.llm.peft import PeftSettings, apply_peft
from zotune.llm.tasks import Example


def packable_model(class_name: str) -> torch.nn.Module:
    """A 2-layer model of each class on ``PACKABLE``; Mistral without its sliding window (its v0.2+ configs)."""
    model = tiny_causal_lm(class_name, initializer_range=0.02)
    if class_name == "MistralForCausalLM":
        model.config.sliding_window = None
    return model


def batch_of_spread_lengths() -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fixtures' small splits
        return examples("sst2", 8) + examples("copa", 3) + examples("boolq", 3)


def trained(model: torch.nn.Module) -> torch.nn.Module:
    """Moves every trainable tensor off its init, so a prefix or LoRA update that packing dropped would show."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("mode", ["full", "lora", "prefix"])
@pytest.mark.parametrize("class_name", sorted(PACKABLE))
def test_packed_rows_equal_the_padded_batch(class_name, mode):
    model = packable_model(class_name)
    assert packing_unsupported(model) is None
    if mode != "full":
        model = trained(apply_peft(model, mode, PeftSettings(num_virtual_tokens=3), seed=7))
    tok = tiny_tokenizer()
    exs = batch_of_spread_lengths()  # single- and multi-token candidates, short and passage-long prompts
    packed = Scorer(model, tok, packing=True, row_tokens=48)
    padded = Scorer(model, tok, packing=False, group_overhead=None)
    lengths = [len(packed.encode(e.prompt, "")[0]) for e in exs]
    rows = pack_rows(lengths, 48)
    assert 1 < len(rows) < len(exs) and any(len(r) > 2 for r in rows)  # really packed, several to a row
    with torch.no_grad():
        for got, ref in zip(packed.candidate_scores(exs), padded.candidate_scores(exs)):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        for kind in ("classification_loss", "lm_loss"):
            batch = exs if kind == "classification_loss" else examples("squad", 3)
            torch.testing.assert_close(getattr(packed, kind)(batch), getattr(padded, kind)(batch),
                                       atol=1e-5, rtol=1e-5)


def test_packing_changes_no_prediction_of_a_bigger_random_batch():
    """40 random prompts of 2-60 tokens in rows of the default size: the same argmax and losses."""
    model, tok = tiny_model("llama", seed=1), tiny_tokenizer()
    rng = random.Random(0)
    words = ["good", "bad", "film", "the", "was", "plot", "actors", "Question", "Answer", "it", "not"]
    exs = [Example(prompt=" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) + " It was",
                   candidates=(" great", " terrible"), gold=(rng.randint(0, 1),)) for _ in range(40)]
    packed, grouped = Scorer(model, tok, packing=True), Scorer(model, tok, packing=False, group_overhead=0)
    with torch.no_grad():
        assert packed.predictions(exs) == grouped.predictions(exs)
        torch.testing.assert_close(packed.classification_loss(exs), grouped.classification_loss(exs),
                                   atol=1e-5, rtol=1e-5)


def test_auto_packs_only_where_proved():
    tok = tiny_tokenizer()
    assert Scorer(tiny_model("llama"), tok).packing  # auto: on
    assert packing_unsupported_by_config(tiny_model("llama").config) is None  # the check before the weights load
    for arch in ("opt", "gpt2", "gemma3"):  # absolute positions, or sliding-window layers
        model = tiny_model(arch)
        assert packing_unsupported(model) is not None
        assert packing_unsupported_by_config(model.config) is not None
        assert not Scorer(model, tok).packing
        with pytest.raises(ValueError, match="packing is not available"):
            Scorer(model, tok, packing=True)
    windowed = tiny_causal_lm("MistralForCausalLM", sliding_window=8)
    assert "sliding-window" in packing_unsupported(windowed)
    assert "sliding-window" in packing_unsupported_by_config(windowed.config)
    flash = tiny_model("llama")
    flash.config._attn_implementation = "flash_attention_2"
    assert "4D mask" in packing_unsupported(flash)
    prompt_tuned = apply_peft(tiny_model("llama"), "prefix", PeftSettings(num_virtual_tokens=2))
    assert packing_unsupported(prompt_tuned) is None  # prefix tuning: its keys/values, no input tokens
    with pytest.raises(ValueError):
        Scorer(tiny_model("llama"), tok, packing="yes")
    with pytest.raises(ValueError):
        Scorer(tiny_model("llama"), tok, row_tokens=0)


def test_pack_rows_is_a_deterministic_first_fit_partition():
    lengths = [30, 5, 60, 12, 12, 40, 3, 90]
    rows = pack_rows(lengths, 64)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 90 for r in rows)  # capacity: max(64, the longest)
    assert rows == pack_rows(lengths, 64)
    assert rows[0] == [7]  # longest first, alone at capacity 90
    assert pack_rows([4, 4, 4], 1000) == [[0, 1, 2]]
    with pytest.raises(ValueError):
        pack_rows([3], 0)


def test_packed_mask_keeps_sequences_apart_and_shows_the_prefix():
    batch = build_packed([[5, 6, 7], [8, 9]], [[0, 1]], pad_id=0, virtual=2, dtype=torch.float32)
    allowed = batch.attention_mask[0, 0] == 0
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert batch.position_ids.tolist() == [[2, 3, 4, 2, 3]]  # each sequence's own positions after the prefix
    assert allowed[:, :2].all()  # every token sees the prefix
    tokens = allowed[:, 2:]
    assert tokens[4].tolist() == [False, False, False, True, True]  # second sequence: itself, causally
    assert tokens[2].tolist() == [True, True, True, False, False]
    assert not tokens[0, 1]  # causal


def test_packing_flag_errors_are_one_line_and_leave_no_run(tmp_path, capsys, tiny_dir):
    from fixtures.tiny import save_tiny
    from test_cli_inputs import CUSTOM, SMALL, one_line_error

    from zotune.cli import main

    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_dir), *CUSTOM, "--out", str(out), "--packing", "maybe"]) == 2
    one_line_error(capsys, "unknown packing 'maybe'; use one of auto, on, off")
    gpt2 = save_tiny(tmp_path / "gpt2", "gpt2")  # absolute positions: packing is refused, not approximated
    capsys.readouterr()  # the writer's progress bar
    assert main(["train", "--model", str(gpt2), *CUSTOM, *SMALL, "--out", str(out), "--packing", "on"]) == 2
    one_line_error(capsys, "packing is not available: GPT2LMHeadModel")  # from its config: no weights loaded
    assert not out.exists()
