"""Two runs' metrics side by side: how far their training losses differ and each one's median step time.

    python benchmarks/main_job/compare_runs.py A/metrics.jsonl B/metrics.jsonl

The same run on two CPUs (or with another code path) should give the same losses up to the rounding of the
matrix kernels; this prints the largest difference, how many losses are bit-identical, and the median wall
seconds between consecutive steps of each (the step time, evaluations excluded by the median).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def steps(path: str) -> list[dict]:
    return [r for r in map(json.loads, Path(path).read_text().splitlines()) if "loss" in r]


def main(a: str, b: str) -> dict:
    first, second = steps(a), steps(b)
    if [r["step"] for r in first] != [r["step"] for r in second]:
        raise SystemExit("the two runs did not log the same steps")
    gaps = {name: statistics.median(y["wall_time"] - x["wall_time"] for x, y in zip(run, run[1:]))
            for name, run in ((a, first), (b, second))}
    return {"steps": len(first),
            "max_abs_loss_difference": max(abs(x["loss"] - y["loss"]) for x, y in zip(first, second)),
            "bit_identical_losses": sum(x["loss"] == y["loss"] for x, y in zip(first, second)),
            "median_step_seconds": {name: round(v, 3) for name, v in gaps.items()}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), indent=1))
