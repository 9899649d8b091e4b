"""Peak memory of MeZO vs DiZO in full fine-tuning (DiZO's main setting: S = key/value weights).

Each method runs in its own process: load the embedded model, make every non-embedding tensor trainable
(``apply_peft(model, "full")``), build the optimizer and take ``--steps`` steps with a projection cycle
after each ``--interval`` (so the cycle's transient copy of S is inside the measured peak). Reports the
process's peak resident memory (``ru_maxrss``; CPU run) and DiZO's anchor bytes.

    nice -n 10 python benchmarks/dizo/memory.py --out benchmarks/dizo/memory_full.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def single(args: argparse.Namespace) -> dict:
    import torch

    import zotune
    from zotune.algorithms.dizo import dizo_transform
    from zotune.llm.models import load_model
    from zotune.llm.objectives import Scorer
    from zotune.llm.peft import PeftSettings, apply_peft, trainable_parameters
    from zotune.llm.tasks import get_task, sample_splits

    torch.set_num_threads(args.threads)
    splits = sample_splits(get_task("mr"), 64, 0, 0, seed=0)
    loaded = load_model(args.model, dtype="float32")
    model = apply_peft(loaded.model, "full", PeftSettings(), seed=0)
    model.eval()
    params = trainable_parameters(model)
    scorer = Scorer(model, loaded.tokenizer, 64)
    batch = splits.train[:16]
    after_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    options = dict(interval=args.interval, search_iters=args.search_iters) if args.method == "dizo" else {}
    opt = zotune.build_optimizer(args.method, params, lr=1e-6, eps=1e-3, **options)
    for _ in range(args.steps):
        opt.step(lambda: scorer.loss(batch, "ce"))
    out = {"method": args.method, "trainable_params": sum(p.numel() for _, p in params),
           "param_bytes": sum(p.numel() * p.element_size() for _, p in params),
           "peak_rss_mb_after_load": after_load,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "forward_passes": opt.forward_passes}
    if args.method == "dizo":
        t = dizo_transform(opt)
        out.update(anchor_bytes=t.anchor_bytes, projected_tensors=len(t.layers),
                   projected_params=sum(l.anchor.numel() for l in t.layers), cycles=t.cycles)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--interval", type=int, default=1)
    parser.add_argument("--search-iters", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/dizo/memory_full.json")
    parser.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        print("RESULT " + json.dumps(single(args)), flush=True)
        return
    runs = []
    for method in ("mezo", "dizo"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--single", "--method", method],
                             capture_output=True, text=True, check=True).stdout
        runs.append(next(json.loads(l[7:]) for l in out.splitlines() if l.startswith("RESULT ")))
        print(runs[-1], flush=True)
    command = "nice -n 10 python benchmarks/dizo/memory.py " + " ".join(sys.argv[1:])
    Path(args.out).write_text(json.dumps({"command": command, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
