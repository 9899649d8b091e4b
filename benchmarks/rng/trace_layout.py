"""Why the Threefry kernel is traced on a block-sized scratch buffer: the same kernel, compiled after three
different first calls, timed on the same tensors (one process, interleaved rounds).

    python benchmarks/rng/trace_layout.py > benchmarks/rng/results/trace_layout.<date>.json

  real-block     first traced on a real block: the second half starts where the first one's size ends,
                 which dynamo's duck shaping turns into a graph guard (zotune before 2026-11-29)
  tiny-scratch   first traced on a 6-element scratch block (inductor plans for 6 elements)
  block-scratch  first traced on a scratch block of 2^20 pairs at offsets that equal nothing else (zotune now)

Rows: ns per element of a 2M-element tensor's single block x16 (offset 0, like most weights), of the 16
blocks of a 32M tensor (offsets > 0), and of an 885k-element tensor x37 (an MLP weight of SmolLM2-135M).
"""

from __future__ import annotations

import json
import statistics
import time
import types
from collections.abc import Callable

import torch

from zotune.bench.step import machine
from zotune.core import samplers

HALF = samplers.THREEFRY_BLOCK // 2


def fresh_kernel(tag: str) -> Callable[..., None]:
    source = samplers._threefry_gaussian
    clone = types.FunctionType(source.__code__.replace(co_name=tag), source.__globals__, tag)
    return torch.compile(clone, dynamic=True, fullgraph=True)


def main() -> dict:
    torch.set_num_threads(2)
    words = torch.tensor([5, -7, 0, 0], dtype=torch.int32)
    coefficients = torch.tensor([1e-3, 1.0], dtype=torch.float64)
    own, big, mlp = torch.zeros(2 * HALF), torch.zeros(32 * HALF), torch.zeros(884736)
    kernels = {name: fresh_kernel(name.replace("-", "_")) for name in ("real-block", "tiny-scratch", "block-scratch")}
    kernels["real-block"](own[:HALF].detach(), own[HALF:].detach(), words, coefficients)
    tiny = torch.zeros(32)
    kernels["tiny-scratch"](tiny[3:9].detach(), tiny[17:23].detach(), words, coefficients)
    scratch = torch.zeros(2 * HALF + 32)
    kernels["block-scratch"](scratch[:HALF].detach(), scratch[HALF + 17: 2 * HALF + 17].detach(), words, coefficients)
    kernels["block-scratch"](scratch[3: HALF + 3].detach(), scratch[HALF + 19: 2 * HALF + 19].detach(), words, coefficients)

    def blocks(kernel: Callable[..., None], tensor: torch.Tensor) -> None:
        for start in range(0, tensor.numel(), 2 * HALF):
            block = tensor[start: start + 2 * HALF]
            half = block.numel() // 2
            kernel(block[:half].detach(), block[half:].detach(), words, coefficients)

    cases = {"2M tensor x16": (lambda k: [blocks(k, own) for _ in range(16)], 16 * own.numel()),
             "32M tensor": (lambda k: blocks(k, big), big.numel()),
             "885k tensor x37": (lambda k: [blocks(k, mlp) for _ in range(37)], 37 * mlp.numel())}
    variants = {f"{name} | {case}": (lambda k=kernel, f=fn: f(k), numel)
                for name, kernel in kernels.items() for case, (fn, numel) in cases.items()}
    for fn, _ in variants.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(5):
        for name, (fn, _) in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {"benchmark": "trace_layout", "rounds": 5, "threads": 2, "torch": torch.__version__, **machine(),
            "ns_per_element_median": {name: round(statistics.median(v) / variants[name][1] * 1e9, 3)
                                      for name, v in samples.items()}}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
