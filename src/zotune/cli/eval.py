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

from zotune.cli._common import add_config_flags, given_flags, run_guarded


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="evaluate a model (zero-shot) or a checkpoint on a task",
                                   description=__doc__)
    parser.add_argument("--checkpoint", help="a run folder or its checkpoint folder: the run's model, data, template, "
                                             "split sizes and seed (config.yaml) are used unless a flag says otherwise")
    parser.add_argument("--split", choices=("test", "dev"), default="test", help="which split to score [test]")
    parser.add_argument("--measure-scoring", action="store_true",
                        help="time full-vocabulary vs candidate-only scoring on one batch")
    add_config_flags(parser, only=_EVAL_KEYS)
    parser.set_defaults(func=run)
    return parser


# the options evaluation uses; the rest of a run's config (method, steps, ...) does not change a score
_EVAL_KEYS = {"model", "dtype", "peft", "task", "num_dev", "num_eval", "max_length", "max_new_tokens", "eval_batch_size",
              "packing", "data", "test_data", "template", "label_words", "label_field", "answer_field", "data_dir", "seed",
              "threads", "device", "progress"}


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


def _checkpoint_and_config(args: argparse.Namespace):
    """The checkpoint folder and the config to evaluate with: the run's (when the checkpoint sits in a run
    folder), then the flags the user typed."""
    from pathlib import Path

    from zotune.train.checkpoint import CHECKPOINT_DIR, checkpoint_meta
    from zotune.train.config import resolve_config
    from zotune.train.loop import load_run_config

    flags = given_flags(args)
    ckpt, run_values = None, {}
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        if (ckpt / CHECKPOINT_DIR).is_dir():
            ckpt = ckpt / CHECKPOINT_DIR
        if not ckpt.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {args.checkpoint}")
        meta = checkpoint_meta(ckpt)
        if (ckpt.parent / "config.yaml").is_file():
            run_values = {k: v for k, v in load_run_config(ckpt.parent).flat().items() if k in _EVAL_KEYS}
        else:  # a checkpoint copied out of its run folder: its own record of model and task
            run_values = {"model": meta.get("model"), "task": meta.get("task")}
    cfg = resolve_config(run_values, {**flags, "num_train": 0})
    return ckpt, cfg


def run(args: argparse.Namespace) -> int:
    def body() -> int:
        import torch

        from zotune.llm.evaluate import evaluate
        from zotune.llm.models import load_model
        from zotune.llm.objectives import Scorer
        from zotune.train.checkpoint import load_checkpoint
        from zotune.train.loop import prepare_data, resolve_task

        ckpt, cfg = _checkpoint_and_config(args)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if args.split == "test":
            cfg.data.num_dev = 0
        task = resolve_task(cfg)
        splits = prepare_data(cfg, task)
        examples = splits.dev if args.split == "dev" else splits.test
        if not examples:
            raise ValueError(f"the {args.split} split is empty (--num-dev / --num-eval)")
        loaded = load_model(cfg.model.name, dtype=cfg.model.dtype, quiet=False)
        model = loaded.model
        if ckpt is not None:
            model = load_checkpoint(model, ckpt)
        model.eval()
        scorer = Scorer(model, loaded.tokenizer, cfg.data.max_length, packing=cfg.data.packing)
        start = time.perf_counter()
        metrics = evaluate(scorer, task, examples, batch_size=cfg.data.eval_batch_size,
                           max_new_tokens=cfg.data.max_new_tokens, progress=cfg.run.progress and sys.stderr.isatty(),
                           desc=args.split)
        result = {"model": cfg.model.name, "task": task.name, "split": args.split, "checkpoint": str(ckpt) if ckpt else None,
                  **metrics, "seconds": round(time.perf_counter() - start, 2)}
        if args.measure_scoring:
            if task.kind == "generation":
                raise ValueError("--measure-scoring needs a task with candidates")
            result["scoring"] = _measure(scorer, examples[: min(16, len(examples))])
        print(json.dumps(result))
        return 0

    return run_guarded("eval", body)
