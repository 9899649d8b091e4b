"""A training job's place in a data-parallel run (``torchrun --nproc-per-node N -m zotune train``).

Every rank loads the model, draws the same global batch (the batch sampler is seeded) and evaluates the
probes on its own shard of it, ``batch[rank::world]``; the optimizer's :class:`~zotune.core.distributed.LossSync`
averages each probe loss (weighted by the shard's examples, or tokens for the LM loss), so the ranks take
the same step and their weights stay identical. Evaluation is sharded the same way and the metrics are
combined, weighted by each shard's size. Rank 0 owns the run folder (config, logs, checkpoints, summary);
the other ranks write theirs to a private temporary folder, removed at the end, so every rank runs the
same code and reads back only what it wrote itself.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

import torch

from zotune.core.distributed import LossSync

__all__ = ["RankContext", "launched_by_torchrun", "torchrun_command"]

T = TypeVar("T")


def launched_by_torchrun() -> bool:
    """True in a process ``torchrun`` started with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """The command that runs ``zotune <argv>`` on ``nproc`` local ranks (one machine; for several nodes
    call ``torchrun`` yourself with ``--nnodes``, ``--node-rank`` and ``--rdzv-endpoint``)."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "zotune", *argv]


@dataclass
class RankContext:
    """This process's rank in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    sync: LossSync | None = None
    _scratch: list[Path] = field(default_factory=list)
    _owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @classmethod
    def from_environment(cls, device: str) -> "RankContext":
        """Join the process group torchrun set up (gloo, or NCCL when the job runs on CUDA devices)."""
        if not launched_by_torchrun():
            return cls()
        import torch.distributed as dist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        owns = False
        if not dist.is_initialized():
            if cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl" if cuda else "gloo")
            owns = True
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, sync=LossSync(),
                   _owns_group=owns)

    def device(self, requested: torch.device) -> torch.device:
        """Each rank on its own GPU: ``cuda`` without an index means this rank's local device."""
        if self.distributed and requested.type == "cuda" and requested.index is None:
            return torch.device("cuda", self.local_rank)
        return requested

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every world-th item from its rank on."""
        return list(items[self.rank::self.world])

    def any(self, flag: bool) -> bool:
        return self.sync.any(flag) if self.sync is not None else flag

    def combine_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Metrics of the whole set from every rank's metrics of its shard (means weighted by ``n``)."""
        if self.sync is None:
            return metrics
        n = float(metrics.get("n", 0))
        combined: dict[str, float] = {}
        for key in sorted(k for k in metrics if k != "n"):
            combined[key] = self.sync.mean_loss(float(metrics[key]), n)
        combined["n"] = int(round(self.sync.mean_loss(n, 1.0) * self.world))
        return combined

    def scratch_folder(self) -> Path:
        """A private folder for a non-main rank's copy of the run folder (removed by :meth:`close`)."""
        path = Path(tempfile.mkdtemp(prefix=f"zotune-rank{self.rank}-"))
        self._scratch.append(path)
        return path / "run"

    def close(self) -> None:
        for path in self._scratch:
            shutil.rmtree(path, ignore_errors=True)  # a folder this rank created itself
        self._scratch.clear()
        if self._owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns_group = False

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"world_size": self.world}
        if self.sync is not None:
            info["bytes_exchanged"] = self.sync.bytes_exchanged
            info["all_reduces"] = self.sync.calls
        return info
