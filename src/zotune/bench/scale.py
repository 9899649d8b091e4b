"""Memory at scale: ZO steps on a random-weight Llama-shaped model as large as the machine holds.

Each mode runs in a fresh process (so the peaks share no allocator history), and reports its peak RSS:

* ``infer``: build the model, one forward pass of the loss (no autograd);
* ``zo``: build the model, ``steps`` zotune MeZO steps (two forwards and three in-place passes each).

The model is built on the meta device and materialised once in its dtype (``to_empty``), then filled in
place with random numbers from zotune's own sampler (std ``init_std``; norms set to one): at no point do two
copies of the weights exist. Backpropagation with Adam is not run; it is reported as the usual estimate of
16 bytes a parameter (fp32 weights, gradients and two moments; mixed precision needs as much again for
half-precision copies), which no 24 GiB machine would hold for these models.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

from zotune.bench.step import machine
from zotune.core.memory import peak_rss_mb, reset_peak_rss

__all__ = ["ScaleConfig", "run_scale", "measure_scale_mode", "build_random_llama"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class ScaleConfig:
    """A Llama shape (default: about 5.1B parameters: Llama-7B's width with 24 layers) and the run."""

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    vocab_size: int = 32000
    dtype: str = "bfloat16"
    batch: int = 2
    length: int = 32
    steps: int = 1
    init_std: float = 0.02
    threads: int = 2

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                     "batch", "length", "steps", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")


def build_random_llama(cfg: ScaleConfig) -> torch.nn.Module:
    """The model with random weights, materialised once in ``cfg.dtype`` and filled in place."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import zotune
    from zotune.core.samplers import Direction

    config = LlamaConfig(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                         num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                         num_key_value_heads=cfg.num_attention_heads, vocab_size=cfg.vocab_size,
                         max_position_embeddings=max(cfg.length, 128), tie_word_embeddings=False)
    with torch.device("meta"):
        model = LlamaForCausalLM(config).to(_DTYPES[cfg.dtype])
    model = model.to_empty(device="cpu")  # the one and only allocation of the weights
    sampler = zotune.make_sampler("gaussian")
    with torch.no_grad():
        for index, (name, param) in enumerate(model.named_parameters()):
            if param.dim() == 1:  # RMSNorm scales
                param.fill_(1.0)
            else:
                param.zero_()  # to_empty's memory is garbage, maybe NaN, which decay = 0 would keep
                sampler.apply_(param, Direction(0, 0, 0, index), alpha=cfg.init_std)
        # buffers (the rotary inverse frequencies) were left empty by to_empty: take them from a freshly
        # built rotary module, which is tiny
        for buffer_name, buffer in model.named_buffers():
            module_name, _, attr = buffer_name.rpartition(".")
            module = model.get_submodule(module_name)
            fresh = type(module)(config=config)
            buffer.copy_(getattr(fresh, attr))
    model.eval()
    return model


def measure_scale_mode(cfg: ScaleConfig, mode: str) -> dict[str, Any]:
    """Peak RSS (MiB) of one mode, in this process."""
    import zotune

    torch.set_num_threads(cfg.threads)
    reset_peak_rss()
    started = time.perf_counter()
    model = build_random_llama(cfg)
    built = time.perf_counter()
    params = sum(p.numel() for p in model.parameters())
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    after_build = peak_rss_mb()
    input_ids = torch.randint(0, cfg.vocab_size, (cfg.batch, cfg.length), generator=torch.Generator().manual_seed(0))

    def closure() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=input_ids, labels=input_ids).loss.float()

    losses = []
    if mode == "infer":
        losses.append(float(closure()))
    elif mode == "zo":
        optimizer = zotune.mezo(model.named_parameters(), lr=1e-7, eps=1e-3)
        for _ in range(cfg.steps):
            losses.append(float(optimizer.step(closure)))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return {"mode": mode, "params": params, "weights_mb": round(weights_mb, 1),
            "peak_rss_after_build_mb": round(after_build, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "build_seconds": round(built - started, 1), "run_seconds": round(time.perf_counter() - built, 1),
            "losses": losses}


def run_scale(cfg: ScaleConfig) -> dict[str, Any]:
    """Both modes, each in a fresh process, and the ratios."""
    results = {}
    for mode in ("infer", "zo"):
        command = [sys.executable, "-m", "zotune.bench", "scale-memory", "--config-json",
                   json.dumps(dataclasses.asdict(cfg)), "--mode", mode]
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    params = results["zo"]["params"]
    adam_mb = 16 * params / 2**20
    return {
        "benchmark": "scale", "config": dataclasses.asdict(cfg), **machine(), "torch": torch.__version__,
        "params": params, "modes": results,
        "zo_peak_over_inference": round(results["zo"]["peak_rss_mb"] / results["infer"]["peak_rss_mb"], 3),
        "adam_estimate_mb": round(adam_mb, 1),
        "adam_estimate_over_zo_peak": round(adam_mb / results["zo"]["peak_rss_mb"], 2),
    }
