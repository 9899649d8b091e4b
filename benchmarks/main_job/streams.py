"""The table of ``streams.sh``: the main job's test accuracy per stream and seed, with mean and a 95% interval.

    python benchmarks/main_job/streams.py avx512-zen4.2026-12-04
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from zotune.bench.convergence import ci95, difference_ci95

RESULTS = Path(__file__).parent / "results"


def runs(tag: str) -> dict[str, dict[int, dict]]:
    found: dict[str, dict[int, dict]] = {"threefry": {}, "splitmix": {}}
    main_job = RESULTS / f"summary.packed.{tag}.json"
    if main_job.is_file():  # the main job is Threefry at seed 0
        found["threefry"][0] = json.loads(main_job.read_text())
    for path in sorted((RESULTS / f"streams.{tag}").glob("*-seed*.summary.json")):
        stream, seed = path.name.split(".")[0].split("-seed")
        found[stream][int(seed)] = json.loads(path.read_text())
    return found


def main(tag: str) -> None:
    found = runs(tag)
    tests = {s: [found[s][k]["final"]["test"]["accuracy"] for k in sorted(found[s])] for s in found}
    print(f"| stream | {' | '.join(f'seed {k}' for k in sorted(found['threefry']))} | mean ± 95% CI | wall s (mean) |")
    print("|---|" + "---|" * (len(found["threefry"]) + 2))
    for stream, by_seed in found.items():
        cells = [f"{by_seed[k]['final']['test']['accuracy']:.3f} (dev {by_seed[k]['final']['dev']['accuracy']:.3f})"
                 for k in sorted(by_seed)]
        half = ci95(tests[stream])
        mean = statistics.fmean(tests[stream])
        wall = statistics.fmean(r["wall_seconds"] for r in by_seed.values())
        print(f"| {stream} | {' | '.join(cells)} | {mean:.3f}" + (f" ± {half:.3f}" if half else "") + f" | {wall:.0f} |")
    diff = difference_ci95(tests["threefry"], tests["splitmix"])
    if diff:
        d, low, high = diff
        print(f"\nThreefry - SplitMix64: {d:+.3f} (95% interval {low:+.3f} to {high:+.3f})")


if __name__ == "__main__":
    main(sys.argv[1])
