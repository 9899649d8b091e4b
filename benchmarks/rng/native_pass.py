"""One pass over a 32M-element float32 tensor, native kernel against the compiled torch kernel, in one process.

    python benchmarks/rng/native_pass.py > benchmarks/rng/results/native_pass.<cpu>.<date>.json

ns per element (medians of --rounds interleaved rounds, 2 threads) for ``uniform`` and ``gaussian``, and µs
per ``add_`` of a 1000-element tensor (a call's fixed cost). The two backends give the same bits
(tests/test_native.py); this measures only their speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from zotune.bench.step import machine
from zotune.core.samplers import Direction, make_sampler


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--numel", type=int, default=1 << 25)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    big, small = torch.zeros(args.numel), torch.zeros(1000)
    direction = Direction(1, 0, 0, 0)
    samplers = {f"{kind}@{backend}": make_sampler(kind, backend=backend)
                for kind in ("uniform", "gaussian") for backend in ("native", "compiled")}
    for sampler in samplers.values():  # build, compile and check before timing
        sampler.add_(big, direction, 1e-3)
        sampler.add_(small, direction, 1e-3)
    per_element: dict[str, list[float]] = {name: [] for name in samplers}
    per_call: dict[str, list[float]] = {name: [] for name in samplers}
    for _ in range(args.rounds):
        for name, sampler in samplers.items():
            start = time.perf_counter()
            sampler.add_(big, direction, 1e-3)
            per_element[name].append((time.perf_counter() - start) / args.numel * 1e9)
            start = time.perf_counter()
            for _ in range(200):
                sampler.add_(small, direction, 1e-3)
            per_call[name].append((time.perf_counter() - start) / 200 * 1e6)
    return {"benchmark": "native_pass", "numel": args.numel, "rounds": args.rounds, "threads": 2,
            "torch": torch.__version__, **machine(),
            "ns_per_element": {k: round(statistics.median(v), 3) for k, v in per_element.items()},
            "us_per_1000_element_call": {k: round(statistics.median(v), 1) for k, v in per_call.items()}}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
