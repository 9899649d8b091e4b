"""Step cost and memory of every method on a real model, side by side in one run.

For one model and trainable set (``full``, ``lora``), each variant is timed in interleaved rounds, so
that machine noise hits all of them alike:

* ``forward x2``: two forward passes of the loss closure, the floor of any two-point step;
* ``reference``: MeZO's reference design re-stated (:mod:`zotune.reference`): four regenerations of z from
  the global RNG per step (+eps, -2eps, +eps, then the update), out-of-place ``p.data = p.data + s z``;
* every method named in ``methods`` (``mezo``, ``kerzoo``, ``pezo``, ``dizo``, ``kerzoo+pezo+dizo``, ...),
  built with :func:`zotune.build_optimizer` exactly as a user would.

The closure is the plain Hugging Face causal-LM loss on a fixed random batch, with **full-vocabulary
logits** (as MeZO's reference computes them), so every variant pays the same forward.

Per variant the result holds seconds per step (median over rounds), the ratio to two forwards, forward
passes per step and random numbers drawn per step, both counted by the optimizer. DiZO's projection
search runs once every ``interval`` steps; its cycle is timed on its own and amortised:
``amortised = step + cycle / interval`` (the same for forward passes).

Memory: the peak RSS (Linux ``VmHWM``) of a fresh process that loads the model and runs two steps of one
variant, over that of a fresh process running two double forwards. Every process first runs one warm-up
step and then resets the peak, so the peak is the workload's steady state (weights included), not the
loader's transient or the one-time compilation of the sampler kernels. ``--memory-only`` re-measures just
this part (peak RSS does not depend on other jobs' CPU use) and appends it as its own line.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from zotune.bench.step import machine
from zotune.core.memory import peak_rss_mb, reset_peak_rss

__all__ = ["CostConfig", "run_cost", "run_cost_memory", "measure_memory_mode", "numel"]

REFERENCE = "reference"
INFERENCE = "infer"


@dataclass
class CostConfig:
    """One step-cost experiment (a ``kind = "cost"`` file under ``benchmarks/``)."""

    model: str = "smollm2-135m"
    peft: str = "full"
    methods: list[str] = field(default_factory=lambda: ["mezo", "kerzoo", "kerzoo-unbiased", "pezo", "pezo-block", "dizo", "momentum", "zo-adam", "kerzoo+pezo+dizo"])
    batch: int = 16
    length: int = 64
    rounds: int = 3
    reference: bool = True
    memory: bool = True
    lr: float = 1e-9  # tiny: the weights barely move, so every round times the same model
    eps: float = 1e-3
    method_options: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.peft not in ("full", "lora", "prefix"):
            raise ValueError(f"peft must be full, lora or prefix, got {self.peft!r}")
        for name in ("batch", "length", "rounds"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.methods:
            raise ValueError("methods must name at least one method")


def numel(params: list[tuple[str, torch.Tensor]]) -> int:
    return sum(p.numel() for _, p in params)


def _prepare(cfg: CostConfig) -> tuple[torch.nn.Module, list[tuple[str, torch.Tensor]], Callable[[], torch.Tensor]]:
    from zotune.llm.models import load_model
    from zotune.llm.peft import PeftSettings, apply_peft, trainable_parameters

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    loaded = load_model(cfg.model, dtype=cfg.dtype)
    # prefix initialisation from real activations needs text; random-token init is enough for timing
    model = apply_peft(loaded.model, cfg.peft, PeftSettings(prefix_init_real=False))
    model.eval()
    params = trainable_parameters(model)
    vocab = model.config.vocab_size if hasattr(model, "config") else loaded.model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, vocab, (cfg.batch, cfg.length), generator=generator)

    def closure() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=input_ids, labels=input_ids).loss.float()

    return model, params, closure


def _build(cfg: CostConfig, method: str, params: list[tuple[str, torch.Tensor]]) -> Any:
    import zotune

    # one options table serves every method of the experiment: each gets the options its components take
    options = {k: v for k, v in cfg.method_options.items() if k != "search_closure"}
    known = _method_option_names(method)
    return zotune.build_optimizer(method, params, lr=cfg.lr, eps=cfg.eps, **{k: v for k, v in options.items() if k in known})


def _method_option_names(method: str) -> set[str]:
    """Flat option names and nested component names (``{"kerzoo": {...}}``) the method takes."""
    from zotune.methods import parse_method

    components = parse_method(method)
    return {name for c in components for name in c.options} | {c.name for c in components}


def _periodic(optimizer: Any) -> Any | None:
    """The transform with periodic forward-pass work (DiZO's search), if any: timed apart and amortised."""
    return next((t for t in optimizer.transforms if t.period > 0), None)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_variants(cfg: CostConfig, params: list[tuple[str, torch.Tensor]], closure: Callable[[], torch.Tensor]) -> dict[str, Any]:
    """Interleaved timings and the optimizers' own counts, for every variant."""
    from zotune.reference import mezo_global_rng_draw, reference_mezo_step

    tensors = [p for _, p in params]
    draw, begin_pass = mezo_global_rng_draw(seed=0)
    optimizers = {method: _build(cfg, method, params) for method in cfg.methods}

    variants: dict[str, Callable[[], Any]] = {"forward x2": lambda: (closure(), closure())}
    if cfg.reference:
        variants[REFERENCE] = lambda: reference_mezo_step(tensors, closure, draw, lr=cfg.lr, eps=cfg.eps, begin_pass=begin_pass)
    for method, optimizer in optimizers.items():
        variants[method] = lambda o=optimizer: o.step(closure)
    for fn in variants.values():  # warm-up: compile kernels, fault pages in
        fn()
    before = {m: (o.step_count, o.forward_passes, o.random_numbers_drawn) for m, o in optimizers.items()}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(cfg.rounds):
        for name, fn in variants.items():
            samples[name].append(_timed(fn))

    medians = {name: statistics.median(values) for name, values in samples.items()}
    floor = medians["forward x2"]
    total = numel(params)
    rows: dict[str, dict[str, Any]] = {
        "forward x2": {"seconds_per_step": medians["forward x2"], "forward_passes_per_step": 2, "random_numbers_per_step": 0},
    }
    if cfg.reference:
        # four regenerations of every trainable element per step (counted, not instrumented)
        rows[REFERENCE] = {"seconds_per_step": medians[REFERENCE], "forward_passes_per_step": 2,
                           "random_numbers_per_step": 4 * total}
    for method, optimizer in optimizers.items():
        steps0, passes0, numbers0 = before[method]
        steps = optimizer.step_count - steps0
        row = {
            "seconds_per_step": medians[method],
            "forward_passes_per_step": (optimizer.forward_passes - passes0) / steps,
            "random_numbers_per_step": (optimizer.random_numbers_drawn - numbers0) / steps,
            # parameter-sized state the method keeps besides the weights (KerZOO's averaging copy, Adam's
            # moments, DiZO's anchor), as the optimizer declares it
            "state_mb": round(sum(optimizer.state_bytes().values()) / 2**20, 1),
            "state_buffers": sorted(optimizer.state_bytes()),
        }
        projection = _periodic(optimizer)
        if projection is not None:  # periodic work (DiZO's search): time one cycle (weights untouched), amortise it
            passes_before = optimizer.forward_passes
            cycle = _timed(lambda: projection.periodic_work(optimizer, closure))
            cycle_passes = optimizer.forward_passes - passes_before
            row.update({
                "search_cycle_seconds": round(cycle, 4),
                "search_cycle_forward_passes": cycle_passes,
                "interval": projection.period,
                "seconds_per_step": medians[method] + cycle / projection.period,
                "seconds_per_plain_step": round(medians[method], 4),
                "forward_passes_per_step": row["forward_passes_per_step"] + cycle_passes / projection.period,
            })
        rows[method] = row
    for row in rows.values():
        row["ratio_to_two_forwards"] = round(row["seconds_per_step"] / floor, 3)
        row["seconds_per_step"] = round(row["seconds_per_step"], 4)
    return {"rows": rows, "samples_seconds": {k: [round(x, 4) for x in v] for k, v in samples.items()}}


def measure_memory_mode(cfg: CostConfig, mode: str, steps: int = 2) -> dict[str, Any]:
    """In this (fresh) process: load the model, reset the peak, run ``steps`` of ``mode``, report the peak."""
    from zotune.reference import mezo_global_rng_draw, reference_mezo_step

    model, params, closure = _prepare(cfg)
    if mode == INFERENCE:
        def one_step() -> None:
            closure()
            closure()
    elif mode == REFERENCE:
        draw, begin_pass = mezo_global_rng_draw(seed=0)
        tensors = [p for _, p in params]

        def one_step() -> None:
            reference_mezo_step(tensors, closure, draw, lr=cfg.lr, eps=cfg.eps, begin_pass=begin_pass)
    else:
        optimizer = _build(cfg, mode, params)
        projection = _periodic(optimizer)

        def one_step() -> None:
            optimizer.step(closure)
    # One warm-up step before the peak is reset, in every mode alike: it compiles the sampler kernels (a
    # one-time cost of the process, not of training) and lets the allocator reach its steady state.
    one_step()
    reset_peak_rss()
    for _ in range(steps):
        one_step()
    if mode not in (INFERENCE, REFERENCE) and projection is not None:  # periodic work's working copies count too
        projection.periodic_work(optimizer, closure)
    return {"mode": mode, "peak_rss_mb": round(peak_rss_mb(), 1)}


def _memory_in_subprocesses(cfg: CostConfig, modes: list[str], echo: Callable[[str], None]) -> dict[str, float]:
    peaks: dict[str, float] = {}
    for mode in modes:
        echo(f"memory: {mode}")
        command = [sys.executable, "-m", "zotune.bench", "cost-memory", "--config-json", json.dumps(asdict(cfg)), "--mode", mode]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"memory process for {mode!r} failed:\n{result.stderr[-2000:]}")
        peaks[mode] = json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    return peaks


def run_cost_memory(cfg: CostConfig, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Only the memory part (peak RSS does not depend on other jobs' CPU use, so it may run beside them)."""
    echo = echo or (lambda message: print(message, file=sys.stderr))
    start = time.perf_counter()
    modes = [INFERENCE] + ([REFERENCE] if cfg.reference else []) + list(cfg.methods)
    peaks = _memory_in_subprocesses(cfg, modes, echo)
    return {"kind": "cost-memory", "config": asdict(cfg), "peak_rss_mb": peaks,
            "memory_ratio_to_inference": {mode: round(peaks[mode] / peaks[INFERENCE], 3) for mode in modes[1:]},
            "torch": torch.__version__, "wall_seconds": round(time.perf_counter() - start, 1)}


def run_cost(cfg: CostConfig, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The whole experiment: timings in this process, then one fresh process per memory mode."""
    echo = echo or (lambda message: print(message, file=sys.stderr))
    usable = set().union(*(_method_option_names(m) for m in cfg.methods))
    unused = sorted(set(cfg.method_options) - usable)
    if unused:  # a typo would otherwise be dropped silently by _build
        raise ValueError(f"method_options {', '.join(unused)} are not options of any of {', '.join(cfg.methods)}")
    start = time.perf_counter()
    model, params, closure = _prepare(cfg)
    echo(f"{cfg.model} / {cfg.peft}: {numel(params):,} trainable parameters; timing {cfg.rounds} rounds")
    timing = time_variants(cfg, params, closure)
    trainable = numel(params)
    del model, params, closure  # one model in memory at a time: the memory processes load their own
    result: dict[str, Any] = {
        "kind": "cost",
        "config": asdict(cfg),
        "trainable_params": trainable,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **machine(),
        **timing,
    }
    if cfg.memory:
        memory = run_cost_memory(cfg, echo)
        result["peak_rss_mb"] = memory["peak_rss_mb"]
        for mode, ratio in memory["memory_ratio_to_inference"].items():
            result["rows"][mode]["memory_ratio_to_inference"] = ratio
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result
