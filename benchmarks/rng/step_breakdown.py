"""Where a ZO step's time goes beyond its two forwards: the closure, the sampler passes, and the rest.

    python benchmarks/rng/step_breakdown.py > benchmarks/rng/results/step_breakdown.<date>.json

The model and batch of ``zotune bench step`` (random Llama, SmolLM2-135M shape, batch 16 x 64, fp32, full
fine-tuning). For each sampler or method, ``--rounds`` steps after two warm-up steps; inside each step the
closure (the two forwards) and every ``sampler.apply_`` call are timed, so

    step = closure + passes + other (estimator, transforms, bookkeeping)

with two standalone forward passes timed in the same rounds for reference. The forwards' own time swings by
10% from round to round on this machine, so the step's overhead is also given as ``1 + passes / closure``
within each step (``step_over_its_forwards``), which that swing does not touch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from zotune.bench.step import _optimizer, build_model, machine, make_closure


def timed_closure(closure: Callable[[], torch.Tensor], spent: list[float]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        start = time.perf_counter()
        value = closure()
        spent[0] += time.perf_counter() - start
        return value

    return run


def timed_apply(apply: Callable[..., None], spent: list[float]) -> Callable[..., None]:
    def run(*args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        apply(*args, **kwargs)
        spent[0] += time.perf_counter() - start

    return run


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samplers", nargs="+", default=["gaussian", "uniform", "pezo"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = build_model()
    closure = make_closure(model, 16, 64)
    optimizers = {name: _optimizer(name, model) for name in args.samplers}
    spent_closure, spent_pass = [0.0], [0.0]
    for optimizer in optimizers.values():
        optimizer.sampler.apply_ = timed_apply(optimizer.sampler.apply_, spent_pass)  # type: ignore[method-assign]
    rows: dict[str, dict[str, list[float]]] = {"forward x2": {"total": []}, **{name: {"total": [], "closure": [], "passes": [], "other": [], "step_over_its_forwards": []}
                                            for name in optimizers}}
    step_closure = timed_closure(closure, spent_closure)
    for optimizer in optimizers.values():
        optimizer.step(step_closure)
        optimizer.step(step_closure)
    for _ in range(args.rounds):
        start = time.perf_counter()
        closure()
        closure()
        rows["forward x2"]["total"].append(time.perf_counter() - start)
        for name, optimizer in optimizers.items():
            spent_closure[0] = spent_pass[0] = 0.0
            start = time.perf_counter()
            optimizer.step(step_closure)
            total = time.perf_counter() - start
            rows[name]["total"].append(total)
            rows[name]["closure"].append(spent_closure[0])
            rows[name]["passes"].append(spent_pass[0])
            rows[name]["other"].append(total - spent_closure[0] - spent_pass[0])
            rows[name]["step_over_its_forwards"].append(1.0 + spent_pass[0] / spent_closure[0])
    medians = {name: {part: round(statistics.median(v), 4) for part, v in parts.items()} for name, parts in rows.items()}
    two = medians["forward x2"]["total"]
    return {"benchmark": "step_breakdown", "rounds": args.rounds, "threads": torch.get_num_threads(),
            "torch": torch.__version__, **machine(), "median_seconds": medians,
            "ratio_to_two_forwards": {name: round(parts["total"] / two, 3) for name, parts in medians.items()}}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
