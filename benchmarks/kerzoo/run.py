"""KerZOO vs MeZO: steps to reach a target training loss on a small real task, each at its own tuned lr.

Task: zotune's ``mr`` (Rotten-Tomatoes movie-review sentences, "<sentence> It was" -> " terrible" / " great").
Model: the embedded SmolLM2-135M-Instruct, frozen, read once by ``features.py``; what is fine-tuned by ZO is
its classification head for the task: the two label words' rows of the output embedding (initialised from the
pretrained rows, so step 0 is the zero-shot model) plus a rank-8 residual adapter on the final hidden state
(LoRA-style: B = 0 at the start). 10,368 trainable parameters. Loss: cross-entropy over the two label words.

Protocol (all in ``config.json``):
  * per method and eps, a learning-rate grid on the tuning seeds; the best lr is the one with the lowest
    median steps-to-target (runs that never reach it count as max_steps + 1);
  * that lr then runs on fresh evaluation seeds, which are the reported numbers;
  * "steps to target" = the first step after which the full training-set loss (all n_train examples,
    computed exactly, not a minibatch) is <= the target; every step costs both methods 2 forward passes.

Usage:  python benchmarks/kerzoo/run.py            (writes results.json and curves.png next to this file)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import zotune

HERE = Path(__file__).resolve().parent


class Head(torch.nn.Module):
    def __init__(self, w_cand: torch.Tensor, rank: int, seed: int) -> None:
        super().__init__()
        hidden = w_cand.shape[1]
        generator = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(w_cand.clone())
        self.a = torch.nn.Parameter(torch.randn(rank, hidden, generator=generator) / math.sqrt(hidden))
        self.b = torch.nn.Parameter(torch.zeros(hidden, rank))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h + (h @ self.a.T) @ self.b.T) @ self.w.T


def run_one(feats: dict, method: str, lr: float, eps: float, seed: int, cfg: dict) -> dict:
    # The final hidden states have norm ~41: use h / s and W s (s = their mean norm on the training set),
    # which leaves every logit unchanged but gives the trainable rows unit-scale inputs, so that one lr
    # grid fits both the head rows and the adapter.
    scale = float(feats["h_train"].norm(dim=1).mean())
    head = Head(feats["w_cand"] * scale, cfg["rank"], seed=1234)  # the same start for every run
    h, y, h_test = feats["h_train"] / scale, feats["y_train"], feats["h_test"] / scale
    # "kerzoo-unbiased" is the variant this benchmark measured (then named "kerzoo"; that name is now the
    # authors' algorithm, 3 queries per step); an unknown name is an error, not a silent MeZO run
    factory = {"mezo": zotune.mezo, "kerzoo-unbiased": zotune.kerzoo_unbiased}[method]
    optimizer = factory(head.named_parameters(), lr=lr, eps=eps, seed=seed)
    rng = np.random.RandomState(seed)
    n, batch = h.shape[0], cfg["batch_size"]
    order, pos = rng.permutation(n), 0

    def full_loss() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(head(h), y))

    curve = [full_loss()]
    reached = None
    for step in range(1, cfg["max_steps"] + 1):
        if pos + batch > n:
            order, pos = rng.permutation(n), 0
        idx = torch.from_numpy(order[pos : pos + batch])
        pos += batch
        hb, yb = h[idx], y[idx]
        optimizer.step(lambda: float(torch.nn.functional.cross_entropy(head(hb), yb)))
        loss = full_loss()
        curve.append(loss)
        if not math.isfinite(loss):
            break
        if reached is None and loss <= cfg["target_loss"]:
            reached = step
    with torch.no_grad():
        accuracy = float((head(h_test).argmax(-1) == feats["y_test"]).float().mean())
    return {
        "method": method, "lr": lr, "eps": eps, "seed": seed, "steps_to_target": reached,
        "final_train_loss": curve[-1], "min_train_loss": min(curve), "test_accuracy": accuracy,
        "forward_passes": optimizer.forward_passes, "curve": curve[:: cfg["curve_every"]],
    }


def censored(runs: list[dict], max_steps: int) -> list[int]:
    return [r["steps_to_target"] if r["steps_to_target"] is not None else max_steps + 1 for r in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description="KerZOO vs MeZO steps-to-target benchmark")
    parser.add_argument("--config", default=str(HERE / "config.json"))
    parser.add_argument("--out", default=str(HERE / "results.json"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = json.loads(Path(args.config).read_text())
    from features import extract  # the same folder

    feats = torch.load(extract(cfg["n_train"], cfg["n_test"], cfg["max_length"]))
    start = time.perf_counter()
    zero_shot = run_one(feats, "mezo", 0.0, 1e-3, 0, dict(cfg, max_steps=0))
    print(f"zero-shot: train loss {zero_shot['final_train_loss']:.4f}, test accuracy {zero_shot['test_accuracy']:.3f}")
    results: dict = {"config": cfg, "zero_shot": {k: zero_shot[k] for k in ("final_train_loss", "test_accuracy")},
                     "tuning": [], "evaluation": [], "summary": []}
    for eps in cfg["eps"]:
        for method in cfg["methods"]:
            best = None
            for lr in cfg["lr_grid"]:
                runs = [run_one(feats, method, lr, eps, s, cfg) for s in cfg["tuning_seeds"]]
                med = statistics.median(censored(runs, cfg["max_steps"]))
                results["tuning"] += [{k: v for k, v in r.items() if k != "curve"} for r in runs]
                print(f"tune {method:6s} eps={eps:g} lr={lr:g}: median steps {med} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
                if best is None or med < best[0]:
                    best = (med, lr)
            runs = [run_one(feats, method, best[1], eps, s, cfg) for s in cfg["eval_seeds"]]
            results["evaluation"] += runs
            steps = censored(runs, cfg["max_steps"])
            summary = {
                "method": method, "eps": eps, "lr": best[1], "steps_to_target": steps,
                "median_steps": statistics.median(steps),
                "reached": sum(r["steps_to_target"] is not None for r in runs),
                "median_final_train_loss": statistics.median(r["final_train_loss"] for r in runs),
                "median_test_accuracy": statistics.median(r["test_accuracy"] for r in runs),
            }
            results["summary"].append(summary)
            print("eval", json.dumps(summary), flush=True)
    results["seconds"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(results, indent=1))
    plot(results, Path(args.out).with_name("curves.png"))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    fig, axes = plt.subplots(1, len(cfg["eps"]), figsize=(5.5 * len(cfg["eps"]), 4), squeeze=False)
    colors = {"mezo": "tab:blue", "kerzoo-unbiased": "tab:red", "kerzoo": "tab:red"}  # "kerzoo": older results.json
    for ax, eps in zip(axes[0], cfg["eps"]):
        for summary in results["summary"]:
            if summary["eps"] != eps:
                continue
            runs = [r for r in results["evaluation"] if r["eps"] == eps and r["method"] == summary["method"]]
            x = np.arange(len(runs[0]["curve"])) * cfg["curve_every"]
            for i, r in enumerate(runs):
                ax.plot(x, r["curve"], color=colors[r["method"]], alpha=0.6, lw=1,
                        label=f"{r['method']} lr={r['lr']:g}" if i == 0 else None)
        ax.axhline(cfg["target_loss"], color="k", ls="--", lw=0.8, label="target")
        ax.set_title(f"eps = {eps:g}")
        ax.set_xlabel("step (2 forward passes each)")
        ax.set_ylabel("full training-set loss")
        ax.legend()
    fig.suptitle("MR / SmolLM2-135M head: MeZO vs KerZOO (order 3), each at its tuned lr")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
