"""Data parallelism for ZO: the ranks share the directions and exchange only the probe losses.

A ZO step needs no gradient exchange. Every rank builds the same optimizer with the same seed, so every
rank regenerates the same z from ``(seed, step, query, parameter)``; each rank evaluates the probes on
its own shard of the batch, and the ranks agree on each probe loss by averaging it:

    L_q = sum_r w_r L_{q,r} / sum_r w_r        (one all-reduce of two float64 numbers per forward pass)

Every rank then computes the same coefficients c_q from the same L_q and applies the same update to the
same weights, so the weights stay identical without ever being broadcast (after one broadcast at the
start, which makes sure they start identical). With equal weights w_r = 1 and equal-sized shards of a
batch whose loss is a mean over examples, L_q is the loss of the combined batch (up to float rounding);
a closure that returns :class:`Weighted` ``(loss, weight)`` (the number of examples or tokens its loss
averages over) makes this exact for shards of any size.

:class:`LossSync` does the averaging with ``torch.distributed`` (gloo on CPUs, NCCL on GPUs), or with any
function that sums a small tensor across workers (``LossSync(hook=...)``), so a user's own communication
layer works too. Give it to the optimizer: ``zotune.mezo(params, sync=LossSync())``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

__all__ = ["LossSync", "Weighted", "parameters_fingerprint"]

# the exchanged tensor: (w L, w) in float64, so the mean keeps the precision the difference quotient needs
_EXCHANGED_NUMBERS = 2
_BYTES_PER_NUMBER = 8


class Weighted(NamedTuple):
    """A rank's loss and the weight it carries in the mean across ranks (examples or tokens in its shard)."""

    loss: Any
    weight: float


SumHook = Callable[[torch.Tensor], torch.Tensor]


class LossSync:
    """Averages each probe loss across the ranks of a data-parallel job.

    Args:
        group: the ``torch.distributed`` process group (``None``: the default group, which must be
            initialised before the first step).
        hook: instead of ``torch.distributed``, a function that returns the element-wise sum of its
            argument (a float64 tensor of 2 numbers) over all workers. Every worker must call it the same
            number of times in the same order, as with an all-reduce.

    Attributes:
        calls: all-reduces made; ``bytes_exchanged``: payload bytes each rank sent in them (16 per forward
        pass: two float64 numbers).
    """

    def __init__(self, group: Any = None, *, hook: SumHook | None = None) -> None:
        if hook is not None and group is not None:
            raise ValueError("give LossSync either a process group or a hook, not both")
        if hook is not None and not callable(hook):
            raise ValueError("hook must be a callable that sums a tensor across workers")
        self.group = group
        self.hook = hook
        self.calls = 0
        self.bytes_exchanged = 0

    # --- what torch.distributed knows -------------------------------------------------------------------

    def _dist(self) -> Any:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("LossSync needs torch.distributed initialised (torch.distributed.init_process_group, "
                               "or run under torchrun), or a hook")
        return dist

    @property
    def world_size(self) -> int:
        return 1 if self.hook is not None else self._dist().get_world_size(self.group)

    @property
    def rank(self) -> int:
        return 0 if self.hook is not None else self._dist().get_rank(self.group)

    def _device(self) -> torch.device:
        """Where the exchanged tensor lives: NCCL only moves CUDA tensors, gloo and hooks take CPU ones."""
        if self.hook is None and self._dist().get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _sum(self, values: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.bytes_exchanged += values.numel() * values.element_size()
        if self.hook is not None:
            summed = self.hook(values)
            if not isinstance(summed, torch.Tensor) or summed.shape != values.shape:
                raise ValueError(f"the sum hook must return a tensor of shape {tuple(values.shape)}")
            return summed
        self._dist().all_reduce(values, group=self.group)
        return values

    # --- the operations -----------------------------------------------------------------------------------

    def mean_loss(self, loss: float, weight: float = 1.0) -> float:
        """sum_r w_r L_r / sum_r w_r over the ranks (a NaN or inf on any rank makes it non-finite on all,
        so every rank drops the same step)."""
        if not (weight >= 0.0 and math.isfinite(weight)):
            raise ValueError(f"a rank's loss weight must be finite and >= 0, got {weight}")
        # a rank with weight 0 (an empty shard) must not turn the mean into NaN with 0 * inf
        contribution = loss * weight if weight > 0.0 else 0.0
        values = torch.tensor([contribution, weight], dtype=torch.float64, device=self._device())
        summed = self._sum(values).tolist()  # the one host sync: reading the agreed loss
        if summed[1] <= 0.0:
            raise ValueError("every rank gave its loss weight 0: no rank had data this step")
        return summed[0] / summed[1]

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (e.g. a stop signal seen by one rank)."""
        values = torch.tensor([1.0 if flag else 0.0, 0.0], dtype=torch.float64, device=self._device())
        return self._sum(values).tolist()[0] > 0.0

    def broadcast_parameters(self, params: Iterable[torch.Tensor], src: int = 0) -> None:
        """Copy rank ``src``'s values of ``params`` to every rank (once, at the start: the ZO steps keep them
        equal afterwards). A no-op with a hook."""
        if self.hook is not None:
            return
        dist = self._dist()
        for p in params:
            dist.broadcast(p.data, src=dist.get_global_rank(self.group, src) if self.group is not None else src,
                           group=self.group)

    def bytes_per_forward(self) -> int:
        return _EXCHANGED_NUMBERS * _BYTES_PER_NUMBER

    def config(self) -> dict[str, Any]:
        # not part of what a checkpoint must match: a run may resume on another number of ranks
        return {}

    def __repr__(self) -> str:
        return "LossSync(hook)" if self.hook is not None else f"LossSync(group={self.group!r})"


def parameters_fingerprint(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """A float64 vector that differs for parameters that differ anywhere: per tensor, the sum and the sum
    of squares of its values and a position-weighted sum (a permutation changes it). Equal weights give
    bit-equal fingerprints, so ranks can compare theirs."""
    parts = []
    for p in params:
        flat = p.detach().reshape(-1).to(torch.float64)
        ramp = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        parts.append(torch.stack([flat.sum(), (flat * flat).sum(), (flat * ramp).sum()]).cpu())
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
