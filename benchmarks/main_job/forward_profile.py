"""Where the main job's forward time goes, and how close its matrix products run to this CPU's GEMM rate.

    python benchmarks/main_job/forward_profile.py > benchmarks/main_job/results/forward_profile.<date>.json

The main job's model (SmolLM2-135M with its 5-token prefix) and task (``mr``, the training batches of 16 that
``fresh_batch_indices`` draws), ``scorer.loss`` as a step calls it (length groups included). Reports:
  loss_seconds     median seconds of one loss (one of a step's two forwards) over ``--rounds`` x ``--batches``
  top_ops          the torch profiler's operators by self CPU time over ``--batches`` losses
  tokens           real and padded tokens per loss (padding as the length groups leave it)
  achieved_gflops  2 x (non-embedding parameters) x padded tokens / loss time: the forward's useful rate
  gemm_gflops      torch.mm of the forward's commonest shape (padded tokens x 576 @ 576 x 1536) and of
                   2048^3, at 1 and 2 threads: what this CPU's matrix products can do
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from zotune.bench.step import machine
from zotune.llm.models import load_model
from zotune.llm.objectives import Scorer, length_groups
from zotune.llm.packing import pack_rows
from zotune.train.config import TrainConfig
from zotune.train.loop import _Job, build_trainable_model, fresh_batch_indices


def gemm_gflops(m: int, k: int, n: int, threads: int, repeats: int = 20) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return round(2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9, 1)


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cfg = TrainConfig.from_flat()
    threads = cfg.run.threads or 2
    torch.set_num_threads(threads)
    job = _Job(cfg)
    job.validate()
    loaded = load_model(cfg.model.name, dtype=cfg.model.dtype, quiet=True)
    non_embedding = sum(p.numel() for name, p in loaded.model.named_parameters() if "embed" not in name)
    model = build_trainable_model(cfg, loaded.model.eval(), torch.device("cpu"))
    train = job.splits.train
    batches = [[train[i] for i in fresh_batch_indices(len(train), cfg.method.batch_size, seed=cfg.run.seed, step=step,
                                                        iteration=0)] for step in range(1, args.batches + 1)]
    scorer = Scorer(model, loaded.tokenizer, cfg.data.max_length)
    lengths = [[len(scorer.single_token_split(ex)[0]) for ex in batch] for batch in batches]
    real = sum(map(sum, lengths)) / len(batches)
    if scorer.packing:  # packed rows (the default where the model supports it): rows x the widest row
        packed = [(ls, pack_rows(ls, scorer.row_tokens)) for ls in lengths]
        padded = sum(len(rows) * max(sum(ls[i] for i in row) for row in rows) for ls, rows in packed) / len(batches)
    else:
        padded = sum(sum(len(g) * max(ls[i] for i in g) for g in length_groups(ls, scorer.group_overhead))
                     for ls in lengths) / len(batches)
    times = []
    with torch.no_grad():
        scorer.loss(batches[0], "ce")  # warm-up
        for _ in range(args.rounds):
            for batch in batches:
                start = time.perf_counter()
                scorer.loss(batch, "ce")
                times.append(time.perf_counter() - start)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for batch in batches:
                scorer.loss(batch, "ce")
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    loss_seconds = statistics.median(times)
    rows = round(padded / 2)  # a group (or a packed row) is about half the batch's padded tokens
    return {"benchmark": "forward_profile", "threads": threads, "torch": torch.__version__, **machine(),
            "packed_forwards": scorer.packing,
            "loss_seconds": round(loss_seconds, 4),
            "tokens": {"real": round(real, 1), "padded": round(padded, 1)},
            "achieved_gflops": round(2 * non_embedding * padded / loss_seconds / 1e9, 1),
            "top_ops": {e.key: {"share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in top},
            "gemm_gflops": {f"{rows}x576@576x1536, {t} thread(s)": gemm_gflops(rows, 576, 1536, t) for t in (1, 2)}
            | {f"2048^3, {t} thread(s)": gemm_gflops(2048, 2048, 2048, t, repeats=5) for t in (1, 2)}}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
