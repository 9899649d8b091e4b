"""``zotune eval``: zero-shot evaluation of any model on any task, or of a checkpoint from ``zotune train``.

``--measure-scoring`` also times one batch both ways: full-vocabulary logits at every position (the
naive path) against zotune's candidate-only scoring, and prints the saving.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from zotune.cli._common import add_data_flags, run_guarded


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="evaluate a model (zero-shot) or a checkpoint on a task",
                                   description=__doc__)
    parser.add_argument("--model", help="model alias, hub id or local folder (default: the checkpoint's, else smollm2-135m)")
    parser.add_argument("--task", help="task name (default: the checkpoint's, else mr)")
    parser.add_argument("--checkpoint", help="a run's checkpoint folder (or the run folder itself)")
    parser.add_argument("--split", choices=("test", "dev"), default="test", help="which split to score [test]")
    parser.add_argument("--num-eval", type=int, default=500, help="test examples [500]")
    parser.add_argument("--num-dev", type=int, default=200, help="dev examples [200]")
    parser.add_argument("--seed", type=int, default=0, help="data sampling seed [0]")
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch size [32]")
    parser.add_argument("--max-length", type=int, default=128, help="max tokens per sequence [128]")
    parser.add_argument("--max-new-tokens", type=int, default=50, help="generation length [50]")
    parser.add_argument("--dtype", default="float32", help="model dtype [float32]")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--measure-scoring", action="store_true",
                        help="time full-vocabulary vs candidate-only scoring on one batch")
    add_data_flags(parser)
    parser.set_defaults(func=run)
    return parser


def _measure(scorer, examples, repeats: int = 3) -> dict[str, float]:
    """Median seconds of one batch scored (a) the naive way and (b) zotune's way."""
    import torch

    def naive() -> None:
        seqs, starts = [], []
        for ex in examples:
            for cand in ex.candidates:
                full, start = scorer.encode(ex.prompt, cand)
                seqs.append(full)
                starts.append(start)
        ids, mask = scorer._pad(seqs)
        logits = scorer.model(input_ids=ids, attention_mask=mask).logits.float()
        torch.log_softmax(logits, dim=-1)

    def ours() -> None:
        scorer.candidate_scores(examples)

    out = {}
    with torch.no_grad():
        for name, fn in (("full_vocab_logits_s", naive), ("candidate_only_s", ours)):
            fn()  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            out[name] = statistics.median(times)
    out["speedup"] = out["full_vocab_logits_s"] / out["candidate_only_s"]
    out["batch"] = len(examples)
    return out


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        from pathlib import Path

        import torch

        from zotune.llm.evaluate import evaluate
        from zotune.llm.models import load_model
        from zotune.llm.objectives import Scorer
        from zotune.train.config import TrainConfig
        from zotune.train.loop import prepare_data, resolve_task
        from zotune.train.run_folder import CHECKPOINT_DIR, checkpoint_meta, load_checkpoint

        if args.threads:
            torch.set_num_threads(args.threads)
        meta: dict = {}
        ckpt = None
        if args.checkpoint:
            ckpt = Path(args.checkpoint)
            if (ckpt / CHECKPOINT_DIR).is_dir():
                ckpt = ckpt / CHECKPOINT_DIR
            if not ckpt.is_dir():
                raise FileNotFoundError(f"checkpoint folder not found: {args.checkpoint}")
            meta = checkpoint_meta(ckpt)
        cfg = TrainConfig(
            model=args.model or meta.get("model", "smollm2-135m"), task=args.task or meta.get("task", "mr"),
            num_train=0, num_dev=args.num_dev if args.split == "dev" else 0, num_eval=args.num_eval,
            seed=args.seed, max_length=args.max_length, data=args.data, test_data=args.test_data,
            template=args.template, label_words=args.label_words, label_field=args.label_field or "label",
            answer_field=args.answer_field, data_dir=args.data_dir,
        )
        task = resolve_task(cfg)
        splits = prepare_data(cfg, task)
        examples = splits.dev if args.split == "dev" else splits.test
        loaded = load_model(cfg.model, dtype=args.dtype, quiet=False)
        model = loaded.model
        if ckpt is not None:
            model = load_checkpoint(model, ckpt)
        model.eval()
        scorer = Scorer(model, loaded.tokenizer, cfg.max_length)
        start = time.perf_counter()
        metrics = evaluate(scorer, task, examples, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                           progress=sys.stderr.isatty(), desc=args.split)
        result = {"model": cfg.model, "task": task.name, "split": args.split, "checkpoint": str(ckpt) if ckpt else None,
                  **metrics, "seconds": round(time.perf_counter() - start, 2)}
        if args.measure_scoring:
            if task.kind == "generation":
                raise ValueError("--measure-scoring needs a task with candidates")
            result["scoring"] = _measure(scorer, examples[: min(16, len(examples))])
        print(json.dumps(result))
        return 0

    return run_guarded("eval", body)
