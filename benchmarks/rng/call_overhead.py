"""What one sampler call costs beyond its elements: the per-tensor overhead of a pass.

    python benchmarks/rng/call_overhead.py > benchmarks/rng/results/call_overhead.<machine>.<date>.json

A pass over SmolLM2-135M makes one ``add_`` call per tensor (272 tensors, 816 calls a MeZO step). For a tiny
tensor (1,000 elements: its elements cost about 1 us) the time of a call is its overhead. Timed: the whole
``ThreefrySampler.add_`` (compiled kernel), the compiled kernel called directly with prepared arguments
(dynamo's guards, inductor's wrapper, the OpenMP region), and building one small scalar tensor (``add_``
builds two a call on the CPU). Median of 5 rounds of 2,000 calls.
"""

from __future__ import annotations

import json
import statistics
import time

import torch

from zotune.bench.step import machine
from zotune.core import samplers
from zotune.core.samplers import Direction, make_sampler


def per_call_us(fn, calls: int = 2000, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(calls):
            fn(i)
        times.append((time.perf_counter() - start) / calls * 1e6)
    return round(statistics.median(times), 2)


def main() -> None:
    sampler = make_sampler("gaussian", backend="compiled")
    x = torch.zeros(1000)
    for i in range(5):  # compile and warm up
        sampler.add_(x, Direction(1, i, 0, 0), 1e-3)
    kernel = samplers._compiled_kernels[("threefry-gaussian", torch.float32, "cpu")]
    words = torch.tensor([1, 2, 3, 4], dtype=torch.int32)
    coefficients = torch.tensor([1e-3, 1.0], dtype=torch.float64)
    first, second = x[:500], x[500:]
    result = {
        "benchmark": "call_overhead", "torch": torch.__version__, "threads": torch.get_num_threads(), **machine(),
        "elements": x.numel(),
        "us_per_call": {
            "sampler.add_ (compiled)": per_call_us(lambda i: sampler.add_(x, Direction(1, i, 0, 0), 1e-3)),
            "compiled kernel alone": per_call_us(lambda i: kernel(first, second, words, coefficients)),
            "torch.tensor of 4 int32": per_call_us(lambda i: torch.tensor([1, 2, 3, i], dtype=torch.int32)),
        },
    }
    calls = 3 * 272
    result["ms_per_mezo_step_of_smollm2"] = {name: round(us * calls / 1000, 1) for name, us in result["us_per_call"].items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
