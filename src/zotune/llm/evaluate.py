"""Evaluation of a model on a task's examples: accuracy for candidates, SQuAD F1 / EM for generation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from zotune.llm.metrics import exact_match, f1_score, max_over_answers
from zotune.llm.objectives import Scorer
from zotune.llm.tasks.base import Example, Task

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(scorer: Scorer, task: Task, examples: Sequence[Example], *, batch_size: int = 16,
             max_new_tokens: int = 50, progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Metrics of the model on ``examples``: ``{"accuracy": ...}`` or ``{"f1": ..., "em": ...}``, plus ``n``.

    Classification and multiple choice pick the candidate with the highest mean log-probability;
    ReCoRD counts a prediction as correct when it is any of the gold entities.
    """
    if not examples:
        raise ValueError(f"no examples to evaluate for task {task.name}")
    was_training = scorer.model.training
    scorer.model.eval()
    total: dict[str, float] = {}
    # similar lengths in one batch waste less compute on padding; the metrics do not depend on order
    examples = sorted(examples, key=lambda ex: len(ex.prompt) + max((len(c) for c in ex.candidates), default=0))
    try:
        chunks = range(0, len(examples), batch_size)
        for start in tqdm(chunks, desc=desc, disable=not progress, leave=False):
            batch = examples[start: start + batch_size]
            if task.kind == "generation":
                preds = scorer.generate(batch, max_new_tokens=max_new_tokens)
                total["f1"] = total.get("f1", 0.0) + sum(max_over_answers(f1_score, p, ex.answers) for p, ex in zip(preds, batch))
                total["em"] = total.get("em", 0.0) + sum(max_over_answers(exact_match, p, ex.answers) for p, ex in zip(preds, batch))
            else:
                preds = scorer.predictions(batch)
                total["accuracy"] = total.get("accuracy", 0.0) + sum(p in ex.gold for p, ex in zip(preds, batch))
                # the share of predictions of candidate 0 shows label bias (e.g. 98% "great" zero-shot)
                total["pred0_rate"] = total.get("pred0_rate", 0.0) + sum(p == 0 for p in preds)
    finally:
        scorer.model.train(was_training)
    metrics = {k: v / len(examples) for k, v in total.items()}
    metrics["n"] = len(examples)
    return metrics
