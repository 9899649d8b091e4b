"""``zotune demo``: a one-minute MeZO run on a small regression network, to see the engine work."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("demo", help="train a small MLP with MeZO (forward passes only) and print the loss")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import zotune

    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(256, 8, generator=generator)
    y = torch.sin(x @ torch.randn(8, 1, generator=generator))
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

    def closure() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(x), y)

    optimizer = zotune.mezo(model.named_parameters(), lr=args.lr, eps=args.eps, seed=args.seed)
    start_loss = closure().item()
    start = time.perf_counter()
    with tqdm(range(args.steps), desc="MeZO demo", unit="step") as bar:
        for step in bar:
            loss = optimizer.step(closure)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    final_loss = closure().item()
    print(
        f"MSE {start_loss:.4f} -> {final_loss:.4f} in {args.steps} steps "
        f"({optimizer.forward_passes} forward passes, no backward), {time.perf_counter() - start:.1f} s"
    )
    return 0 if final_loss < start_loss else 1
