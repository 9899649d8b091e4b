"""MeZO vs DiZO on a real task with the embedded model: dev accuracy against steps and forward passes,
and each run's peak memory.

Each (method, seed) runs in its own process, so the peak resident memory (``ru_maxrss``) is that run's
alone. The loop uses zotune's public pieces (``load_model``, ``get_task``/``sample_splits``,
``apply_peft``, ``Scorer``, ``evaluate``, ``BatchSampler``, ``build_optimizer``); DiZO's search gets
batches of its own (``search_batch_indices``), as in the official code, so its probes never draw from
the training sampler.

    nice -n 10 python benchmarks/dizo/run.py --steps 300 --seeds 0 1 --out benchmarks/dizo/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def single_run(args: argparse.Namespace) -> dict:
    import torch

    import zotune
    from zotune.algorithms.dizo import dizo_transform
    from zotune.train.loop import fresh_batch_indices as search_batch_indices
    from zotune.llm.evaluate import evaluate
    from zotune.llm.models import load_model
    from zotune.llm.objectives import Scorer
    from zotune.llm.peft import PeftSettings, apply_peft, trainable_parameters
    from zotune.llm.tasks import get_task, sample_splits
    from zotune.train.loop import BatchSampler

    torch.set_num_threads(args.threads)
    task = get_task(args.task)
    splits = sample_splits(task, args.num_train, args.num_dev, 0, seed=args.data_seed)
    loaded = load_model(args.model, dtype="float32")
    model = apply_peft(loaded.model, args.peft, PeftSettings(), seed=args.seed)
    model.eval()
    params = trainable_parameters(model)
    scorer = Scorer(model, loaded.tokenizer, args.max_length)

    def closure_for(indices: list[int]):
        batch = [splits.train[i] for i in indices]
        return lambda: scorer.loss(batch, "ce")

    options = dict(lr=args.lr, eps=args.eps, seed=args.seed)
    if "dizo" in args.method:
        options.update(
            interval=args.interval,
            search_iters=args.search_iters,
            search_closure=lambda step, j: closure_for(
                search_batch_indices(len(splits.train), args.batch_size, seed=args.seed, step=step, iteration=j)
            ),
        )
    opt = zotune.build_optimizer(args.method, params, **options)
    sampler = BatchSampler(len(splits.train), args.batch_size, args.seed)
    curve = []
    t0 = time.perf_counter()

    def dev(step: int, loss: float | None) -> None:
        acc = evaluate(scorer, task, splits.dev, batch_size=32)["accuracy"]
        curve.append({"step": step, "forward_passes": opt.forward_passes, "dev_accuracy": acc,
                      "train_loss_ema": loss, "train_seconds": time.perf_counter() - t0})
        print(f"[{args.method} seed {args.seed}] step {step} fp {opt.forward_passes} dev {acc:.3f} loss {loss}", flush=True)
        if args.progress_dir:  # partial curves survive a run that is stopped early
            with open(Path(args.progress_dir) / f"{args.method}-seed{args.seed}.jsonl", "a") as f:
                f.write(json.dumps(curve[-1]) + "\n")

    dev(0, None)
    ema = None
    train_time = 0.0
    for step in range(1, args.steps + 1):
        closure = closure_for(sampler.next())
        s = time.perf_counter()
        loss = float(opt.step(closure))
        train_time += time.perf_counter() - s
        ema = loss if ema is None else 0.9 * ema + 0.1 * loss
        if step % args.eval_every == 0 or step == args.steps:
            dev(step, ema)
    result = {"method": args.method, "seed": args.seed, "curve": curve, "optimizer_seconds": train_time,
              "trainable_params": sum(p.numel() for _, p in params),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if "dizo" in args.method:
        t = dizo_transform(opt)
        result["dizo"] = {**t.metrics(), "projected_params": sum(l.anchor.numel() for l in t.layers),
                          "last_ratios": t.last_ratios}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="mr")
    parser.add_argument("--peft", default="lora")
    parser.add_argument("--methods", nargs="+", default=["mezo", "dizo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eps", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--interval", type=int, default=50)
    parser.add_argument("--search-iters", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-dev", type=int, default=200)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one process each)")
    parser.add_argument("--out", default="benchmarks/dizo/results.json")
    parser.add_argument("--progress-dir", default=None, help="append each run's dev evaluations to <dir>/<method>-seed<s>.jsonl")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print("RESULT " + json.dumps(single_run(args)), flush=True)
        return
    base = [a for a in sys.argv[1:]]
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    results, running = [], []
    while jobs or running:
        while jobs and len(running) < args.parallel:
            m, s = jobs.pop(0)
            cmd = [sys.executable, __file__, *base, "--single", "--method", m, "--seed", str(s)]
            running.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
        proc = running.pop(0)
        out, _ = proc.communicate()
        for line in out.splitlines():
            if line.startswith("RESULT "):
                results.append(json.loads(line[7:]))
            else:
                print(line, flush=True)
    command = "nice -n 10 python benchmarks/dizo/run.py " + " ".join(base)
    Path(args.out).write_text(json.dumps({"command": command, "config": vars(args), "runs": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
