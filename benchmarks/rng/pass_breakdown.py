"""Where a perturbation pass's nanoseconds go, per element, on this CPU (one process, interleaved rounds).

    python benchmarks/rng/pass_breakdown.py > benchmarks/rng/results/pass_breakdown.<date>.json

Rows, each a fused in-place pass over one float32 tensor of ``--numel`` elements (2 threads):
  memory          flat <- decay * flat + alpha           (the load and store alone)
  uniform         the sampler ``uniform``: Threefry-2x32-20 words, top 24 bits to float, one multiply-add
  rademacher      the sampler ``rademacher``: Threefry words, top bit to a sign
  gaussian        the sampler ``gaussian`` (+ a bit-level log, sqrt, polynomial cos and sin per pair)
  *-13            the same through Threefry-2x32-13 (the named variant with 13 rounds)
  gaussian-float32-sqrt  the sampler's transform written with a plain float32 ``torch.sqrt``. The compiled
                  sampler takes that root too now; the row measured what a float64 root inside the compiled
                  kernel cost (``pass_breakdown.avx512.float64-sqrt.*``), and now checks the two rows agree
  gaussian-libm   Box-Muller through torch.log / cos / sin (Sleef on CPU), the transform used before the
                  polynomial one: the same blocks and kernel layout, only the transform differs
  *-splitmix      the SplitMix64 streams they replaced (64-bit multiplies)
  randn + add_    torch.randn into a buffer, then add_ (what a torch.Generator step costs)
and, for the samplers gaussian and uniform:
  model[...]      a pass over 272 zero tensors with SmolLM2-135M's shapes (134.5M elements: what a step's
                  pass really does), per element
  call[...]       microseconds per ``add_`` of a 1000-element tensor (the fixed cost of one kernel call;
                  ``call[gaussian, eager]``: the eager kernel, which backend auto uses before compiling)
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from zotune.bench.step import machine
from zotune.core.samplers import THREEFRY_BLOCK, Direction, make_sampler
from zotune.core.threefry import _cos_sin_turn, _minus_two_log_uniform, _top24, split_key, threefry2x32


def _libm_gaussian_kernel(first: torch.Tensor, second: torch.Tensor, words: torch.Tensor,
                          coefficients: torch.Tensor) -> None:
    """One block of the Threefry stream with Box-Muller through the library's log, cos and sin."""
    c0 = torch.arange(first.shape[0], dtype=torch.int32) + words[2]
    w0, w1 = threefry2x32(c0, words[3], words[0], words[1])
    u = (_top24(w0) + 0.5) * (1.0 / 16777216.0)
    angle = _top24(w1) * 3.7450702829239286e-07  # 2 pi / 2^24
    radius = torch.sqrt(-2.0 * torch.log(u))
    first.mul_(coefficients[1]).add_(radius * torch.cos(angle) * coefficients[0])
    second.mul_(coefficients[1]).add_(radius * torch.sin(angle) * coefficients[0])


def _float32_sqrt_gaussian_kernel(first: torch.Tensor, second: torch.Tensor, words: torch.Tensor,
                                  coefficients: torch.Tensor) -> None:
    """One block of the Threefry stream with the sampler's transform and a plain float32 square root (what the
    compiled sampler computes; eagerly the sampler takes a float64 root for the same bits)."""
    c0 = torch.arange(first.shape[0], dtype=torch.int32) + words[2]
    w0, w1 = threefry2x32(c0, words[3], words[0], words[1])
    radius = torch.sqrt(_minus_two_log_uniform(w0))
    cos_t, sin_t = _cos_sin_turn(w1)
    first.mul_(coefficients[1]).add_(radius * cos_t * coefficients[0])
    second.mul_(coefficients[1]).add_(radius * sin_t * coefficients[0])


def libm_gaussian_pass(x: torch.Tensor, alpha: float, kernel_fn: Callable[..., None] = _libm_gaussian_kernel
                       ) -> Callable[[], None]:
    kernel = torch.compile(kernel_fn, dynamic=True, fullgraph=True)
    key = split_key(Direction(0, 1, 0, 0).key)
    coefficients = torch.tensor([alpha, 1.0], dtype=torch.float64)

    def run() -> None:
        for start in range(0, x.numel(), THREEFRY_BLOCK):
            block = x[start: start + THREEFRY_BLOCK].detach()
            half = block.numel() // 2
            words = torch.tensor([key[0], key[1], start // 2, 0], dtype=torch.int32)
            kernel(block[:half].detach(), block[half:].detach(), words, coefficients)

    return run


def smollm2_shaped_tensors() -> list[torch.Tensor]:
    """Zero tensors with the shapes of SmolLM2-135M's 272 trainable tensors (tied embedding once)."""
    hidden, inner, kv = 576, 1536, 192
    layer = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inner, hidden), (inner, hidden),
             (hidden, inner), (hidden,), (hidden,)]
    shapes = [(49152, hidden)] + layer * 30 + [(hidden,)]
    return [torch.zeros(shape) for shape in shapes]


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--numel", type=int, default=1 << 25, help="a multiple of 2^21 (the stream's block)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.zeros(args.numel)
    buffer = torch.empty(args.numel)
    alpha = torch.tensor(1e-3, dtype=torch.float64)

    @torch.compile(dynamic=True, fullgraph=True)
    def memory(flat: torch.Tensor, a: torch.Tensor) -> None:
        flat.mul_(1.0).add_(a)

    def randn_add() -> None:
        torch.randn(args.numel, out=buffer)
        x.add_(buffer, alpha=1e-3)

    variants = {"memory": lambda: memory(x, alpha), "randn + add_": randn_add}
    # backend "compiled": "auto" would draw the first 2^26 numbers eagerly (ThreefrySampler.compile_after)
    for name in ("uniform", "gaussian", "rademacher", "uniform-13", "gaussian-13", "uniform-splitmix",
                 "gaussian-splitmix"):
        sampler = make_sampler(name, backend="compiled")
        variants[name] = lambda s=sampler: s.add_(x, Direction(0, 1, 0, 0), 1e-3)
    variants["gaussian-libm"] = libm_gaussian_pass(x, 1e-3)
    variants["gaussian-float32-sqrt"] = libm_gaussian_pass(x, 1e-3, _float32_sqrt_gaussian_kernel)
    tensors = smollm2_shaped_tensors()
    model_numel = sum(t.numel() for t in tensors)
    small = torch.zeros(1000)
    calls = 200
    for name in ("gaussian", "uniform", "gaussian-13", "uniform-13"):
        sampler = make_sampler(name, backend="compiled")

        def model_pass(s=sampler) -> None:
            for index, tensor in enumerate(tensors):
                s.apply_(tensor, Direction(0, 1, 0, index), 1e-3)

        def small_calls(s=sampler) -> None:
            for index in range(calls):
                s.add_(small, Direction(0, 1, 0, index), 1e-3)

        variants[f"model[{name}]"] = model_pass
        variants[f"call[{name}]"] = small_calls
    eager = make_sampler("gaussian", backend="eager")
    variants["call[gaussian, eager]"] = lambda: [eager.add_(small, Direction(0, 1, 0, i), 1e-3) for i in range(calls)]
    for fn in variants.values():
        fn()  # compile, fault in pages
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    per = {name: (calls / 1e6 if name.startswith("call[") else
                  (model_numel if name.startswith("model[") else args.numel) / 1e9) for name in samples}
    ns = {name: round(statistics.median(v) / per[name], 3) for name, v in samples.items() if not name.startswith("call[")}
    return {"benchmark": "pass_breakdown", "numel": args.numel, "model_numel": model_numel, "rounds": args.rounds,
            "threads": args.threads, "torch": torch.__version__, **machine(), "ns_per_element_median": ns,
            "us_per_call_median": {name: round(statistics.median(v) / per[name], 1) for name, v in samples.items()
                                   if name.startswith("call[")},
            "spread": {name: [round(min(v) / per[name], 3), round(max(v) / per[name], 3)] for name, v in samples.items()}}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
