"""Full, LoRA and prefix tuning on tiny models of each architecture."""

from __future__ import annotations

import pytest
import torch

from fixtures.tiny import ARCHS, tiny_model, tiny_tokenizer
from zotune.llm.peft import PeftSettings, apply_peft, find_qv_targets, trainable_parameters

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
