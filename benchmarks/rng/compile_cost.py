"""What compiling the default sampler's kernel costs on a cold start, against drawing eagerly.

    python benchmarks/rng/compile_cost.py > benchmarks/rng/results/compile_cost.<date>.json

Runs in a fresh inductor cache folder that it creates and removes (so the compile is a cold one, as on a
new machine), one process, 2 threads:
  first_compiled_call_seconds  the first ``add_`` of backend ``compiled`` on a 57,600-element tensor (the main
                               job's prefix): dynamo + inductor + the C++ compiler
  compiled_call_us / eager_call_us  median microseconds of an ``add_`` of that tensor afterwards, each backend
  eager_ns_per_element          the eager kernel on a 2^21-element tensor
  break_even_numbers            numbers drawn eagerly that cost as much as the compile
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time


def main() -> dict:
    cache = tempfile.mkdtemp(prefix="zotune-inductor-cold-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # before torch is imported
    try:
        import torch

        from zotune.bench.step import machine
        from zotune.core.samplers import Direction, make_sampler

        torch.set_num_threads(2)
        prefix = torch.zeros(57_600)
        compiled, eager = make_sampler("gaussian", backend="compiled"), make_sampler("gaussian", backend="eager")
        start = time.perf_counter()
        compiled.add_(prefix, Direction(0, 1, 0, 0), 1e-3)
        first = time.perf_counter() - start

        def median_us(sampler, x, calls: int = 30) -> float:
            samples = []
            for i in range(calls):
                start = time.perf_counter()
                sampler.add_(x, Direction(0, 1, 0, i), 1e-3)
                samples.append(time.perf_counter() - start)
            return statistics.median(samples) * 1e6

        median_us(eager, prefix, 3)
        big = torch.zeros(1 << 21)
        eager_ns = median_us(eager, big, 5) * 1e3 / big.numel()
        compiled_ns = median_us(compiled, big, 5) * 1e3 / big.numel()
        return {"benchmark": "compile_cost", "threads": 2, "torch": torch.__version__, **machine(),
                "first_compiled_call_seconds": round(first, 2),
                "compiled_call_us": round(median_us(compiled, prefix), 1),
                "eager_call_us": round(median_us(eager, prefix), 1),
                "eager_ns_per_element": round(eager_ns, 2), "compiled_ns_per_element": round(compiled_ns, 2),
                "break_even_numbers": int(first / ((eager_ns - compiled_ns) * 1e-9))}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
    sys.exit(0)
