"""Full, LoRA and prefix tuning on tiny models of each architecture."""

from __future__ import annotations

import contextlib
import os
import traceback
from pathlib import Path

import pytest
import torch

from fixtures.tiny import ARCHS, tiny_model, tiny_tokenizer
from zotune.llm.peft import PeftSettings, _cache_argument, apply_peft, find_qv_targets, model_forward, trainable_parameters

EXPECTED_TARGETS = {"llama": ["q_proj", "v_proj"], "opt": ["q_proj", "v_proj"], "gpt2": ["c_attn"],
                    "gemma3": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"]}


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_targets_query_and_value_by_structure(arch):
    model = tiny_model(arch)
    assert find_qv_targets(model) == EXPECTED_TARGETS[arch]
    peft_model = apply_peft(model, "lora")
    names = [n for n, _ in trainable_parameters(peft_model)]
    assert names and all("lora_" in n for n in names)
    layers = 2
    per_layer = 2 if arch != "gpt2" else 1
    assert len(names) == 2 * per_layer * layers  # A and B per targeted projection
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():  # B = 0 at init: the adapter starts as the identity
        torch.testing.assert_close(peft_model(input_ids=ids).logits, tiny_model(arch)(input_ids=ids).logits)


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "qwen2"])
def test_prefix_initialised_from_real_activations(arch):
    base = tiny_model(arch)
    peft_model = apply_peft(tiny_model(arch), "prefix", PeftSettings(num_virtual_tokens=3), seed=7)
    params = trainable_parameters(peft_model)
    assert len(params) == 1 and params[0][1].shape[0] == 3
    # The prefix holds the keys/values of 3 real tokens, so the output on x equals the base model's
    # output on [those tokens] + x.
    vocab = base.get_input_embeddings().weight.shape[0]
    prefix_ids = torch.randint(0, vocab, (1, 3), generator=torch.Generator().manual_seed(7))
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        got = peft_model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        ref = base(input_ids=torch.cat([prefix_ids, x], dim=1)).logits[:, 3:]
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "opt", "gpt2", "qwen2"])
def test_prefix_forward_with_the_cache_argument_equals_pefts_forward(arch):
    """model_forward passes the prefix as ``cache=`` where the base model takes it (peft passes the deprecated
    ``past_key_values=``): the same logits as peft's own forward, bit for bit, on a right-padded batch."""
    model = apply_peft(tiny_model(arch), "prefix", PeftSettings(num_virtual_tokens=3), seed=7)
    with torch.no_grad():
        model.prompt_encoder[model.active_adapter].embedding.weight.add_(0.1)  # a trained prefix, not the init
    ids = torch.tensor([[5, 6, 7, 8, 9], [3, 4, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        ours = model_forward(model, ids, mask, use_cache=False).logits
        theirs = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    assert torch.equal(ours, theirs)
    lora = apply_peft(tiny_model(arch), "lora", PeftSettings(), seed=7)  # anything else: the model's own call
    with torch.no_grad():
        assert torch.equal(model_forward(lora, ids, mask).logits, lora(input_ids=ids, attention_mask=mask).logits)


def test_full_mode_freezes_embeddings_unless_asked():
    model = apply_peft(tiny_model("llama"), "full")
    names = {n for n, _ in trainable_parameters(model)}
    assert "model.embed_tokens.weight" not in names and any("q_proj" in n for n in names)
    everything = apply_peft(tiny_model("llama"), "full", PeftSettings(train_embeddings=True))
    assert "model.embed_tokens.weight" in {n for n, _ in trainable_parameters(everything)}


def test_bad_peft_arguments():
    with pytest.raises(ValueError, match="unknown peft mode"):
        apply_peft(tiny_model("llama"), "ia3")
    with pytest.raises(ValueError, match="lora_r"):
        PeftSettings(lora_r=0)
    with pytest.raises(ValueError, match="query/value"):
        find_qv_targets(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    frozen = tiny_model("llama").requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        trainable_parameters(frozen)


class CallOrigins:
    """Records where each ``past_key_values`` deprecation comes from, as a Python warning (the deprecated
    argument) or a transformers log message (the deprecated output field, logged once per process by
    ``warning_once``, which is bypassed here so that every occurrence is seen).

    The origin is the first frame outside transformers, torch and the standard library's warning and logging
    code, walking out from where the deprecation was reported: the code that made the deprecated call, named
    "zotune" or "peft" when it lies in those packages, else by its file.
    """

    def __init__(self) -> None:
        import logging
        import warnings

        import peft
        import transformers

        import zotune

        self.found: list[tuple[str, str]] = []
        self.packages = {name: str(Path(module.__file__).parent) + os.sep for name, module in
                         (("zotune", zotune), ("peft", peft), ("transformers", transformers), ("torch", torch))}
        self.skip = (self.packages["transformers"], self.packages["torch"], str(Path(logging.__file__).parent),
                     warnings.__file__, contextlib.__file__)
        self._catch = warnings.catch_warnings()
        self._patch = pytest.MonkeyPatch()

    def _record(self, message: str) -> None:
        if "past_key_values" not in message:
            return
        for frame in reversed(traceback.extract_stack()[:-2]):  # outward from the reporting call, minus our own
            if not frame.filename.startswith(self.skip):
                origin = next((name for name, folder in self.packages.items() if frame.filename.startswith(folder)),
                              frame.filename)
                self.found.append((origin, message))
                return

    def __enter__(self) -> "CallOrigins":
        import logging
        import warnings

        self._catch.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *args, **kwargs: self._record(str(message))
        self._patch.setattr(logging.Logger, "warning_once", lambda logger, msg, *args, **kwargs: self._record(str(msg)),
                            raising=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self._patch.undo()
        self._catch.__exit__(*exc)

    def origins(self) -> set[str]:
        return {origin for origin, _ in self.found}


def test_prefix_tuning_makes_no_deprecated_cache_call_of_its_own():
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name goes in 5.40): building a
    prefix-tuned model (which runs the base model to initialise the prefix), scoring with it and generating
    from it make no deprecated call from zotune's code. (peft 0.21.2 still passes ``past_key_values`` itself.)"""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from zotune.llm.objectives import Scorer
    from zotune.llm.tasks import Example

    tok = tiny_tokenizer()
    exs = [Example(prompt="It was", candidates=[" great", " terrible"], gold=[0]),
           Example(prompt="Question: Yes or No?", candidates=[" Yes indeed", " No way"], gold=[1])]
    with CallOrigins() as calls:
        model = apply_peft(tiny_model("llama"), "prefix", PeftSettings(num_virtual_tokens=3), seed=7)
        scorer = Scorer(model, tok)
        assert not scorer.uses_model_logits  # a prefix-tuned Llama (the main job's set-up) keeps the fast head
        with torch.no_grad():
            scorer.candidate_scores(exs)
            scorer.lm_loss(exs)
            scorer.generate(exs, max_new_tokens=3)
    assert "zotune" not in calls.origins(), calls.found
    if _cache_argument(model.get_base_model()) == "cache":  # zotune hands the prefix over itself, not via peft
        assert "peft" not in calls.origins(), calls.found
    if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}):  # the renamed transformers
        # the recorder does see a deprecated read, and blames the code that made it
        with CallOrigins() as probe:
            out = tiny_model("llama")(input_ids=torch.tensor([[3, 4]]), use_cache=True)
            assert out.past_key_values is out.cache
        assert probe.origins() == {__file__}
