"""PeZO vs MeZO on a CPU: random numbers drawn per step and step time against two forward passes.

Full fine-tuning of the embedded SmolLM2-135M (every parameter perturbed, the tied embedding included),
one fixed batch of random token ids, loss = cross-entropy over two candidate tokens from the last hidden
state (the classification objective zotune uses). All units run in one process, interleaved round by round
(the order rotates every round), and the medians are reported:

    forward2   two forward passes (the closure twice): the floor of any two-point ZO step
    floor      two forwards + three in-place adds over every parameter (p.add_(c)): what a step with a free
               sampler would cost (three passes: +eps, -2 eps, restore + update)
    mezo       a zotune MeZO step (counter-based Gaussian z, compiled; three regenerations)
    pezo       a zotune pezo-block step (zotune's PeZO variant, default options: n = 2^16 uniform pool,
               block rotations; the authors' scheme is zotune.pezo)
    *_passes   the same steps with a constant closure: the sampler's cost alone

Usage: nice -n 10 python benchmarks/pezo/bench_step.py --rounds 7 --out benchmarks/pezo/results/step_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import zotune
from zotune.llm.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=1 << 16)
    parser.add_argument("--out", default="benchmarks/pezo/results/step_smollm2.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    model = loaded.model
    params = [(name, p) for name, p in model.named_parameters()]  # tied embedding listed once
    for _, p in params:
        p.requires_grad_(True)
    d = sum(p.numel() for _, p in params)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.length), generator=generator)
    labels = torch.randint(0, 2, (args.batch,), generator=generator)
    candidates = torch.tensor([1000, 2000])
    embedding = model.get_input_embeddings().weight

    @torch.no_grad()
    def closure() -> torch.Tensor:
        hidden = model.model(input_ids=ids).last_hidden_state[:, -1]
        logits = hidden.float() @ embedding[candidates].float().T
        return torch.nn.functional.cross_entropy(logits, labels)

    optimizers = {
        "mezo": zotune.mezo(params, lr=1e-7, eps=1e-3, seed=1),
        "pezo": zotune.pezo_block(params, lr=1e-7, eps=1e-3, seed=1, pool_size=args.pool_size),
    }
    tensors = [p for _, p in params]

    def floor() -> None:
        closure()
        closure()
        with torch.no_grad():
            for scale in (1e-3, -2e-3, 1e-3):
                for p in tensors:
                    p.add_(scale)

    zero = torch.tensor(0.0)
    units = {
        "forward2": lambda: (closure(), closure()),
        "floor": floor,
        "mezo": lambda: optimizers["mezo"].step(closure),
        "pezo": lambda: optimizers["pezo"].step(closure),
        "mezo_passes": lambda: optimizers["mezo"].step(lambda: zero),
        "pezo_passes": lambda: optimizers["pezo"].step(lambda: zero),
        "adds3": lambda: [p.add_(s) for s in (1e-3, -2e-3, 1e-3) for p in tensors],
    }
    with torch.no_grad():
        for fn in units.values():  # warm-up: compile the Gaussian kernel, fill caches
            fn()
    times: dict[str, list[float]] = {name: [] for name in units}
    names = list(units)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            with torch.no_grad():
                units[name]()
            times[name].append(time.perf_counter() - start)
        print(f"round {r}: " + ", ".join(f"{n}={times[n][-1]:.3f}s" for n in names), flush=True)

    median = {name: statistics.median(v) for name, v in times.items()}
    drawn = {name: opt.last_step_random_numbers for name, opt in optimizers.items()}
    result = {
        "command": "nice -n 10 python benchmarks/pezo/bench_step.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        ),
        "model": args.model,
        "parameters_perturbed": d,
        "batch": args.batch,
        "length": args.length,
        "threads": args.threads,
        "rounds": args.rounds,
        "pezo_sampler": repr(optimizers["pezo"].sampler),
        "median_seconds": median,
        "all_seconds": times,
        "random_numbers_per_step": drawn,
        "pezo_fraction_of_mezo_draws": drawn["pezo"] / drawn["mezo"],
        "pezo_fraction_of_d": drawn["pezo"] / d,
        "ratio_to_two_forwards": {k: median[k] / median["forward2"] for k in ("floor", "mezo", "pezo")},
        "pezo_ratio_to_floor": median["pezo"] / median["floor"],
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                 "loadavg_at_end": os.getloadavg()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("median_seconds", "random_numbers_per_step", "pezo_fraction_of_mezo_draws",
                                              "ratio_to_two_forwards", "pezo_ratio_to_floor")}, indent=2))


if __name__ == "__main__":
    main()
