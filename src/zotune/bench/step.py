"""Step-cost and memory benchmark: a ZO step against two forward passes, in one process and one run.

What is timed, in interleaved rounds so that machine noise hits every variant alike:

* ``forward x2``: two forward passes of the loss closure (the floor of any two-point ZO step);
* ``reference``: MeZO's reference design (four regenerations of z with ``torch.manual_seed`` +
  ``torch.normal``, out-of-place updates), see :mod:`zotune.reference`;
* ``fast[<sampler>]``: zotune's three-pass, in-place step with each requested sampler;
* ``pass[<sampler>]``: one perturbation pass over all trainable tensors, no forward (where the overhead goes).

Memory: peak RSS of a process that only runs inference against one that trains, each in a fresh process
(``--mode``), so the two peaks do not share an allocator history.

The model is a random Llama with SmolLM2-135M's shape (134.5M parameters, vocab 49152, 30 layers) built
from a config, so no download is needed; the cost of a step depends on shapes, not on weight values.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import zotune
from zotune.core.memory import peak_rss_mb, reset_peak_rss
from zotune.core.optimizer import StepContext
from zotune.core.samplers import Direction
from zotune.reference import mezo_global_rng_draw, reference_mezo_step

SMOLLM2_SHAPE = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
    "max_position_embeddings": 2048,
}


def build_model(layers: int | None = None) -> torch.nn.Module:
    """A randomly initialised Llama with SmolLM2-135M's shape (fewer layers if ``layers`` is given)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(SMOLLM2_SHAPE)
    if layers is not None:
        shape["num_hidden_layers"] = layers
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape))
    model.eval()  # ZO runs forwards with dropout off
    return model


def make_closure(model: torch.nn.Module, batch: int, length: int) -> Callable[[], torch.Tensor]:
    """Causal-LM loss on a fixed random batch, full-vocabulary logits (the plain HF forward)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=generator)

    def closure() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=input_ids, labels=input_ids).loss.float()

    return closure


def machine() -> dict[str, str]:
    """The CPU a timing was taken on: the same code runs 2-10x slower without AVX-512, so numbers from
    machines with another capability or model must never be compared."""
    model = platform.processor() or "unknown"
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name", model)
    described = {"cpu_capability": str(torch.backends.cpu.get_cpu_capability()), "cpu_model": model}
    if "cpu family" in fields:  # virtual machines often name only "AMD EPYC": family and model tell them apart
        described["cpu_family_model"] = f"{fields['cpu family']}/{fields.get('model', '?')}"
    from zotune.core import native

    # the Threefry samplers' CPU passes run 2-4x faster through the native kernel where it builds
    if native.available():
        described["native_kernel"] = "yes" if native.threaded() else "yes, one thread (built without OpenMP)"
        described["native_build"] = native.built_with()
    else:
        described["native_kernel"] = f"no ({native.unavailable_reason()})"
    return described


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _optimizer(name: str, model: torch.nn.Module) -> zotune.ZOOptimizer:
    """MeZO with the sampler ``name``, or the method ``name`` (e.g. ``pezo``, whose sampler is its own);
    ``sampler@backend`` (e.g. ``gaussian@compiled``) picks the sampler's kernel backend."""
    from zotune.core.samplers import available_samplers, make_sampler

    if "@" in name:
        sampler, backend = name.split("@", 1)
        return zotune.mezo(model.named_parameters(), lr=1e-9, eps=1e-3, sampler=make_sampler(sampler, backend=backend))
    if name in available_samplers():
        return zotune.mezo(model.named_parameters(), lr=1e-9, eps=1e-3, sampler=name)
    return zotune.build_optimizer(name, model.named_parameters(), lr=1e-9, eps=1e-3)


def time_step_costs(
    model: torch.nn.Module,
    closure: Callable[[], torch.Tensor],
    samplers: list[str],
    rounds: int,
    with_reference: bool = True,
) -> dict[str, list[float]]:
    """Interleaved timings (seconds) of each variant, ``rounds`` samples each."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizers = {name: _optimizer(name, model) for name in samplers}
    draw, begin_pass = mezo_global_rng_draw(seed=0)

    def two_forwards() -> None:
        closure()
        closure()

    def reference() -> None:
        reference_mezo_step(params, closure, draw, lr=1e-9, eps=1e-3, begin_pass=begin_pass)

    def one_pass(optimizer: zotune.ZOOptimizer) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                context = StepContext(optimizer, 10**6, optimizer.trainable())
                for item in context.params:
                    optimizer.sampler.apply_(item.param, context.direction(0, item), 0.0)

        return run

    variants: dict[str, Callable[[], Any]] = {"forward x2": two_forwards}
    if with_reference:
        variants["reference"] = reference
    for name, optimizer in optimizers.items():
        variants[f"fast[{name}]"] = lambda o=optimizer: o.step(closure)
        variants[f"pass[{name}]"] = one_pass(optimizer)
    for fn in variants.values():  # warm-up: compile kernels, fault in pages
        fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(_timed(fn))
    return samples


def summarize(samples: dict[str, list[float]]) -> dict[str, Any]:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    floor = medians["forward x2"]
    ratios = {name: round(value / floor, 3) for name, value in medians.items() if not name.startswith("pass")}
    return {
        "median_seconds": {name: round(value, 4) for name, value in medians.items()},
        "ratio_to_two_forwards": ratios,
    }


# ---------------------------------------------------------------------------------------------------------
# memory: one fresh process per mode
# ---------------------------------------------------------------------------------------------------------


def run_memory_mode(mode: str, batch: int, length: int, steps: int, layers: int | None, sampler: str) -> dict[str, Any]:
    """Build the model, run ``steps`` iterations of ``mode`` and report the peak RSS of that workload."""
    model = build_model(layers)
    closure = make_closure(model, batch, length)
    if mode == "train":  # compile the sampler kernels first: the compiler's own memory is not training's
        zotune.make_sampler(sampler).add_(torch.zeros(4096), Direction(0, 0, 0, 0), 0.0)
    reset_peak_rss()
    if mode == "infer":
        for _ in range(steps):
            closure()
            closure()
    elif mode == "train":
        optimizer = zotune.mezo(model.named_parameters(), lr=1e-9, eps=1e-3, sampler=sampler)
        for _ in range(steps):
            optimizer.step(closure)
    elif mode == "reference":
        params = [p for p in model.parameters() if p.requires_grad]
        draw, begin_pass = mezo_global_rng_draw(seed=0)
        for _ in range(steps):
            reference_mezo_step(params, closure, draw, lr=1e-9, eps=1e-3, begin_pass=begin_pass)
    else:
        raise ValueError(f"unknown memory mode {mode!r}")
    return {"mode": mode, "peak_rss_mb": round(peak_rss_mb(), 1)}


def measure_memory(args: argparse.Namespace, modes: list[str]) -> dict[str, float]:
    peaks = {}
    for mode in modes:
        command = [
            sys.executable, "-m", "zotune.bench", "memory", "--mode", mode,
            "--batch", str(args.batch), "--length", str(args.length), "--steps", "2", "--sampler", args.samplers[0],
        ]  # fmt: skip
        if args.layers is not None:
            command += ["--layers", str(args.layers)]
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        peaks[mode] = json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    return peaks


# ---------------------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=16, help="sequences per batch (default 16)")
    parser.add_argument("--length", type=int, default=64, help="tokens per sequence (default 64)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument("--layers", type=int, default=None, help="fewer decoder layers, for a quick look")
    parser.add_argument(
        "--samplers", nargs="+", default=["gaussian", "gaussian-torch"], help="samplers of the fast step to time, or methods with a sampler of their own (pezo)"
    )
    parser.add_argument("--no-reference", action="store_true", help="skip MeZO's reference design")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")


def run_step_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(torch.get_num_threads())
    model = build_model(args.layers)
    params = sum(p.numel() for p in model.parameters())
    closure = make_closure(model, args.batch, args.length)
    samples = time_step_costs(model, closure, list(args.samplers), args.rounds, not args.no_reference)
    result: dict[str, Any] = {
        "benchmark": "step",
        "model": f"random Llama, SmolLM2-135M shape ({params:,} params, {model.config.num_hidden_layers} layers)",
        "batch": args.batch,
        "length": args.length,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **machine(),
        **summarize(samples),
    }
    if not args.no_memory:
        del model
        modes = ["infer", "train"] + ([] if args.no_reference else ["reference"])
        peaks = measure_memory(args, modes)
        result["peak_rss_mb"] = peaks
        result["memory_ratio_to_inference"] = {
            mode: round(peaks[mode] / peaks["infer"], 3) for mode in modes if mode != "infer"
        }
    return result
