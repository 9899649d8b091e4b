"""Where a perturbation pass's nanoseconds go, per element, on this CPU (one process, interleaved rounds).

    python benchmarks/rng/pass_breakdown.py > benchmarks/rng/results/pass_breakdown.<date>.json

Rows, each a fused in-place pass over one float32 tensor of ``--numel`` elements (2 threads):
  memory          flat <- decay * flat + alpha           (the load and store alone)
  threefry-bits   + Threefry-2x32-20 words, top bits to float (uniform's transform: one multiply-add)
  uniform         the sampler ``uniform`` (= threefry-bits)
  gaussian        the sampler ``gaussian`` (+ log, sqrt, cos, sin per pair)
  *-splitmix      the SplitMix64 streams they replaced (64-bit multiplies)
  randn + add_    torch.randn into a buffer, then add_ (what a torch.Generator step costs)
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
    for name in ("uniform", "gaussian", "rademacher", "uniform-splitmix", "gaussian-splitmix"):
        sampler = make_sampler(name)
        variants[name] = lambda s=sampler: s.add_(x, Direction(0, 1, 0, 0), 1e-3)
    for fn in variants.values():
        fn()  # compile, fault in pages
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    ns = {name: round(statistics.median(v) / args.numel * 1e9, 3) for name, v in samples.items()}
    return {"benchmark": "pass_breakdown", "numel": args.numel, "rounds": args.rounds, "threads": args.threads,
            "torch": torch.__version__, **machine(), "ns_per_element_median": ns,
            "spread_ns": {name: [round(min(v) / args.numel * 1e9, 3), round(max(v) / args.numel * 1e9, 3)]
                          for name, v in samples.items()}}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
