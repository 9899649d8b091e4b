"""What padding costs the main job's forward, and how much length groups and packed rows save (one process,
interleaved).

    python benchmarks/main_job/padding.py > benchmarks/main_job/results/padding.<date>.json
    python benchmarks/main_job/padding.py --overheads none 96 pack:64 pack:128 pack:256 pack:all

The main job's model (SmolLM2-135M with its 5-token prefix) and task (``mr``, random batches of 16 from the
training split, drawn by ``fresh_batch_indices``), ``scorer.loss`` timed with each ``group_overhead``: ``none`` pads
the batch to its longest sequence in one forward (zotune before length groups); a number cuts the
length-sorted batch where a group saves more padded tokens than that; ``pack:N`` runs the batch packed
(``zotune.llm.packing``) in rows of about N tokens (``all``: one row). Also prints the padded-token counts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from zotune.bench.step import machine
from zotune.llm.models import load_model
from zotune.llm.objectives import Scorer, length_groups
from zotune.llm.packing import pack_rows
from zotune.train.config import TrainConfig
from zotune.train.loop import _Job, build_trainable_model, fresh_batch_indices


def scorer_for(name: str, model, tokenizer, max_length: int) -> Scorer:
    if name.startswith("pack:"):
        width = name.split(":", 1)[1]
        return Scorer(model, tokenizer, max_length, packing=True, row_tokens=10**6 if width == "all" else int(width))
    return Scorer(model, tokenizer, max_length, group_overhead=None if name == "none" else int(name), packing=False)


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overheads", nargs="+", default=["none", "96", "pack:64", "pack:128", "pack:256", "pack:all"])
    args = parser.parse_args()
    cfg = TrainConfig.from_flat()
    torch.set_num_threads(cfg.run.threads or 2)
    job = _Job(cfg)
    job.validate()
    loaded = load_model(cfg.model.name, dtype=cfg.model.dtype, quiet=True)
    model = build_trainable_model(cfg, loaded.model.eval(), torch.device("cpu"))
    train = job.splits.train
    batches = [[train[i] for i in fresh_batch_indices(len(train), cfg.method.batch_size, seed=cfg.run.seed, step=step,
                                                        iteration=0)] for step in range(1, args.batches + 1)]
    scorers = {name: scorer_for(name, model, loaded.tokenizer, cfg.data.max_length) for name in args.overheads}
    lengths = [[len(scorers["none"].single_token_split(ex)[0]) for ex in batch] for batch in batches]
    tokens = {}
    for name in args.overheads:
        padded = 0
        for ls in lengths:
            if name.startswith("pack:"):
                rows = pack_rows(ls, scorers[name].row_tokens)
                padded += len(rows) * max(sum(ls[i] for i in r) for r in rows)
                continue
            groups = [list(range(len(ls)))] if name == "none" else length_groups(ls, int(name))
            padded += sum(len(g) * max(ls[i] for i in g) for g in groups)
        tokens[name] = padded
    samples: dict[str, list[float]] = {name: [] for name in args.overheads}
    with torch.no_grad():
        for scorer in scorers.values():
            scorer.loss(batches[0], "ce")  # warm-up
        for _ in range(args.rounds):
            for name, scorer in scorers.items():
                start = time.perf_counter()
                for batch in batches:
                    scorer.loss(batch, "ce")
                samples[name].append((time.perf_counter() - start) / len(batches))
    reference = statistics.median(samples["none"])
    return {"benchmark": "padding", "model": cfg.model.name, "peft": cfg.model.peft, "task": cfg.data.task,
            "batch": cfg.method.batch_size, "batches": args.batches, "rounds": args.rounds,
            "threads": torch.get_num_threads(), "torch": torch.__version__, **machine(),
            "real_tokens": sum(map(sum, lengths)), "padded_tokens": tokens,
            "seconds_per_forward_median": {k: round(statistics.median(v), 4) for k, v in samples.items()},
            "ratio_to_one_padded_forward": {k: round(statistics.median(v) / reference, 3) for k, v in samples.items()}}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
