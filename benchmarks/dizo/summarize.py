"""Markdown tables from ``run.py``'s results JSON (or its ``--progress-dir`` JSONL files for runs that
were stopped early): dev accuracy against steps and against forward passes, per seed and averaged.

    python benchmarks/dizo/summarize.py benchmarks/dizo/results_lora_mr.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def load(path: Path) -> list[dict]:
    if path.is_dir():
        runs = []
        for f in sorted(path.glob("*.jsonl")):
            method, seed = f.stem.rsplit("-seed", 1)
            runs.append({"method": method, "seed": int(seed), "curve": [json.loads(l) for l in f.read_text().splitlines()]})
        return runs
    return json.loads(path.read_text())["runs"]


def main(path: str) -> None:
    runs = load(Path(path))
    by_method: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        by_method[run["method"]].append(run)
    print("| method | seed | step | forward passes | dev acc |\n|---|---|---|---|---|")
    for method, group in by_method.items():
        for run in sorted(group, key=lambda r: r["seed"]):
            for point in run["curve"]:
                print(f"| {method} | {run['seed']} | {point['step']} | {point['forward_passes']} | {point['dev_accuracy']:.3f} |")
    print("\n| method | step | mean forward passes | mean dev acc (seeds) | peak RSS MB (per seed) |\n|---|---|---|---|---|")
    for method, group in by_method.items():
        steps = sorted({p["step"] for r in group for p in r["curve"]})
        for step in steps:
            points = [p for r in group for p in r["curve"] if p["step"] == step]
            if len(points) < len(group):
                continue  # a seed that did not reach this step
            fp = sum(p["forward_passes"] for p in points) / len(points)
            acc = sum(p["dev_accuracy"] for p in points) / len(points)
            rss = ", ".join(f"{r['peak_rss_mb']:.0f}" for r in group if "peak_rss_mb" in r) if step == steps[-1] else ""
            each = ", ".join(f"{p['dev_accuracy']:.3f}" for p in points)
            print(f"| {method} | {step} | {fp:.0f} | {acc:.3f} ({each}) | {rss} |")


if __name__ == "__main__":
    main(sys.argv[1])
