"""Slow, obvious re-statements of the methods, kept to prove the fast paths equal and to benchmark against.

``reference_mezo_step`` follows MeZO's reference code (princeton-nlp/MeZO ``large_models/trainer.py``) pass
for pass: z is regenerated four times (+eps, -2eps, +eps restore, update) and every pass allocates a new
tensor (``param.data = param.data + scale * z``). How z is drawn is a parameter, so tests can feed it
zotune's own sampler (then the fast step must match it) and benchmarks can feed it MeZO's
``torch.manual_seed`` + ``torch.normal`` draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

DrawZ = Callable[[int, torch.Tensor], torch.Tensor]  # (parameter index, parameter) -> z shaped like it


@torch.no_grad()
def reference_mezo_step(
    params: Sequence[torch.Tensor],
    closure: Callable[[], torch.Tensor | float],
    draw_z: DrawZ,
    *,
    lr: float,
    eps: float,
    weight_decay: float = 0.0,
    decay_mask: Callable[[torch.Tensor], bool] = lambda p: p.dim() >= 2,
    begin_pass: Callable[[], None] = lambda: None,
) -> float:
    """One MeZO step, four passes, out of place. Returns the mean of the two probe losses.

    ``begin_pass()`` runs before every regeneration (MeZO reseeds the global RNG there).
    """

    def perturb(scale: float) -> None:
        begin_pass()
        for index, p in enumerate(params):
            p.data = p.data + scale * eps * draw_z(index, p)

    perturb(+1.0)
    loss_plus = float(closure())
    perturb(-2.0)
    loss_minus = float(closure())
    perturb(+1.0)
    if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
        return float("nan")
    projected_grad = (loss_plus - loss_minus) / (2.0 * eps)
    begin_pass()
    for index, p in enumerate(params):
        z = draw_z(index, p)
        decay = weight_decay if decay_mask(p) else 0.0
        p.data = p.data - lr * (projected_grad * z + decay * p.data)
    return (loss_plus + loss_minus) / 2.0


def mezo_global_rng_draw(seed: int) -> tuple[DrawZ, Callable[[], None]]:
    """MeZO's own draw: ``torch.manual_seed(seed)`` before each pass, then ``torch.normal`` per tensor.

    Uses (and changes) torch's global RNG, exactly as the reference code does; for benchmarks only.
    """

    def begin_pass() -> None:
        torch.manual_seed(seed)

    def draw(index: int, p: torch.Tensor) -> torch.Tensor:
        del index
        return torch.normal(mean=0.0, std=1.0, size=p.shape, device=p.device, dtype=p.dtype)

    return draw, begin_pass
