"""The training loss of each run at the kept lr, as the mean of its logged ``loss_curve`` over each tenth of
the run: the numbers the study's prose quotes to say whether a run's loss was still falling at its end.

    python benchmarks/study/loss_tenths.py benchmarks/study/results/lora-bbc.jsonl \
        > benchmarks/study/results/lora-bbc-loss-tenths.md

Reads only the results file (standard library only); each run's lr is the one its method's final seeds used.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def tenths(losses: list[float]) -> list[float]:
    """Mean of each tenth of ``losses`` (the windows kept by the runner, in step order)."""
    n = len(losses)
    if n < 10:
        raise ValueError(f"a loss curve of {n} points cannot be cut in tenths")
    return [statistics.fmean(losses[i * n // 10:(i + 1) * n // 10]) for i in range(10)]


def main(path: str) -> None:
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    finals = {r["method"]: r["lr"] for r in records if r["seed"] != 0 and r["status"] == "completed"}
    print(f"Training loss by tenth of the run (mean of `loss_curve`), at the kept lr, from `{path}`:\n")
    print("| method | lr | seed | " + " | ".join(f"{k}/10" for k in range(1, 11)) + " |")
    print("|---|---|---|" + "---|" * 10)
    for r in records:
        if r["status"] != "completed" or finals.get(r["method"]) != r["lr"]:
            continue
        losses = [p["loss"] for p in r["loss_curve"] if p.get("loss") is not None]
        print(f"| {r['method']} | {r['lr']:g} | {r['seed']} | " + " | ".join(f"{v:.2f}" for v in tenths(losses)) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/study/loss_tenths.py RESULTS.jsonl")
    main(sys.argv[1])
