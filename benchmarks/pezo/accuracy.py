"""PeZO vs MeZO accuracy on a real task at the same number of steps, through zotune's training loop.

Both runs share every setting (model, task, data sample, batches, seed, lr, eps); only ``--method`` differs.
Writes one JSON with both run summaries.

Usage: ZOTUNE_CACHE=... nice -n 10 python benchmarks/pezo/accuracy.py --steps 200 --out benchmarks/pezo/results/accuracy_mr.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from zotune.llm.models import load_model
from zotune.train.config import TrainConfig
from zotune.train.loop import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="mr")
    parser.add_argument("--peft", default="full")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--num-dev", type=int, default=100)
    parser.add_argument("--num-eval", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="mezo,pezo-block")  # the variant measured here (then named pezo)
    parser.add_argument("--runs", default="/tmp/pezo_runs")
    parser.add_argument("--out", default="benchmarks/pezo/results/accuracy_mr.json")
    args = parser.parse_args()
    loaded = load_model(args.model)
    base = {n: p.detach().clone() for n, p in loaded.model.state_dict().items()}
    summaries = {}
    for method in args.methods.split(","):
        loaded.model.load_state_dict(base)  # every method starts from the same weights
        cfg = TrainConfig.from_flat(
            model=args.model, task=args.task, method=method, peft=args.peft, steps=args.steps, lr=args.lr,
            eps=args.eps, batch_size=args.batch_size, max_length=args.max_length, num_dev=args.num_dev,
            num_eval=args.num_eval, eval_every=max(args.steps // 2, 1), threads=args.threads,
            out=f"{args.runs}/{args.task}-{method}", overwrite=True, progress=False, seed=0,
        )
        start = time.perf_counter()
        summaries[method] = train(cfg, loaded=loaded)
        summaries[method]["wall_seconds"] = time.perf_counter() - start
        print(method, json.dumps(summaries[method], default=str)[:2000], flush=True)
    command = "nice -n 10 python benchmarks/pezo/accuracy.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command, "summaries": summaries}, indent=2, default=str))


if __name__ == "__main__":
    main()
