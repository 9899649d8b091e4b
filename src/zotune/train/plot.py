"""A PNG of a run's curves: training loss (raw and smoothed) and the dev metric against steps."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from zotune.llm.data import atomic_write_bytes

__all__ = ["plot_run"]


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def plot_run(records: list[dict[str, Any]], path: str | Path, metric: str, title: str = "") -> Path:
    """Draw the curves of ``metrics.jsonl`` records into ``path`` (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("loss") is not None and math.isfinite(r["loss"])]
    evals = [r for r in records if r.get(f"dev_{metric}") is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if steps:
        xs = [r["step"] for r in steps]
        ys = [r["loss"] for r in steps]
        ax1.plot(xs, ys, alpha=0.3, label="loss")
        ax1.plot(xs, _smooth(ys), label="smoothed")
        ax1.legend()
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss")
    if evals:
        ax2.plot([r["step"] for r in evals], [r[f"dev_{metric}"] for r in evals], marker="o")
    ax2.set_xlabel("step")
    ax2.set_ylabel(f"dev {metric}")
    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
