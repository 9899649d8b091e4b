"""Steps per second of `zotune train` on 1 and on N processes at the same global batch (one machine).

    python benchmarks/distributed/data_parallel.py > benchmarks/distributed/results/data_parallel.<date>.json

Each configuration runs the real command, ``zotune train`` with the main job's model and data (SmolLM2-135M on
``mr``, batch 16) for ``--steps`` steps without evaluation, once in one process with all the machine's
threads and once with ``--nproc N`` and threads / N per rank, so the machine's cores are shared the same way.
A step's time is the difference of consecutive ``wall_time`` entries of ``metrics.jsonl`` (the median over
the steps after ``--skip``, which compile the sampler). Also reported: the bytes each rank exchanged per step.

What to expect: a rank evaluates its B / N examples, but regenerates z for the whole model itself, so

    step time(N) ~ 2 forward(B / N) + passes over the trainable weights (not divided by N)

On one CPU the ranks share the same cores, so N processes cannot beat one process that uses every core;
with prefix tuning the passes are tiny and the ratio measures only the split of the forward. With one
device per rank (GPUs, or several machines) each rank has its own compute and the forward shrinks by N.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from zotune.bench.step import machine


def run(nproc: int, threads: int, peft: str, steps: int, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "zotune", "train", "--steps", str(steps), "--eval-every", "0", "--no-zero-shot",
               "--num-dev", "0", "--num-eval", "16", "--peft", peft, "--threads", str(threads),
               "--checkpoint-every", "0", "--no-progress", "--out", str(out)]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    walls = [r["wall_time"] for r in records if "loss" in r]
    summary = json.loads((out / "summary.json").read_text())
    return {"walls": walls, "bytes_exchanged": summary.get("bytes_exchanged"), "world_size": summary.get("world_size"),
            "losses": [r["loss"] for r in records if "loss" in r]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads of the single process (ranks get threads / nproc)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--skip", type=int, default=4, help="first steps left out of the median (compilation)")
    parser.add_argument("--peft", nargs="+", default=["prefix", "full"])
    args = parser.parse_args()
    if args.threads % args.nproc:
        raise SystemExit("--threads must be a multiple of --nproc (the ranks share the cores evenly)")
    result: dict[str, Any] = {"command": "python benchmarks/distributed/data_parallel.py " + " ".join(sys.argv[1:]),
                              **machine(), "steps": args.steps, "skip": args.skip, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for peft in args.peft:
            row: dict[str, Any] = {}
            for nproc, threads in ((1, args.threads), (args.nproc, args.threads // args.nproc)):
                measured = run(nproc, threads, peft, args.steps, Path(tmp) / f"{peft}-{nproc}")
                walls = measured["walls"]
                step_times = [b - a for a, b in zip(walls[args.skip:], walls[args.skip + 1:])]
                row[f"{nproc} process(es) x {threads} thread(s)"] = {
                    "median_step_seconds": round(statistics.median(step_times), 4),
                    "steps_per_second": round(1.0 / statistics.median(step_times), 4),
                    "bytes_exchanged_per_step": (measured["bytes_exchanged"] / args.steps
                                                 if measured["bytes_exchanged"] is not None else None),
                    "first_losses": [round(x, 6) for x in measured["losses"][:3]],
                }
                print(f"{peft}: {nproc} x {threads}: {row[list(row)[-1]]['median_step_seconds']} s/step", file=sys.stderr)
            one, many = (row[k]["median_step_seconds"] for k in row)
            row["ratio, N processes / 1 process (step time)"] = round(many / one, 3)
            result["runs"][peft] = row
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
