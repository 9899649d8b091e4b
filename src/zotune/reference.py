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


DrawNamed = Callable[[int, str, torch.Tensor], torch.Tensor]  # (query, name, parameter) -> z shaped like it


@torch.no_grad()
def reference_kerzoo_step(
    named_params: Sequence[tuple[str, torch.Tensor]],
    copies: dict[str, torch.Tensor],
    closure: Callable[[], torch.Tensor | float],
    draw_z: DrawNamed,
    draw_k: Callable[[int, str], float],
    *,
    step: int,
    lr: float,
    eps: float,
    queries: int = 3,
    clip_norm: float = 4e5,
    averaging_rate: float = 1.0 / 6.0,
) -> float:
    """One step of the authors' KerZOO, restated literally from ``Rainbow0427/zo_acc`` (a0b9f8d,
    ``trainer.py``: ``zo_perturb_parameters``, ``zo_step``, ``zo_update``, ``beta_k``): out of place, the
    probe point y = c / beta + (1 - 1/beta) x entered and left around every query, the restore dividing by
    1 - 1/beta, a dense gradient buffer. ``copies`` is their second sequence c (a dict of tensors, updated in
    place; start it as a copy of the weights). ``draw_z`` / ``draw_k`` give z and k per (query, tensor), so a
    test can feed it zotune's own streams. Returns the last query's L+ (what their ``zo_step`` returns).
    """

    def kernel(k: float) -> float:
        return 15.0 * k * (5.0 - 7.0 * k * k)

    beta = 1.0 + averaging_rate * step  # their beta_k, set to 1 + global_step / 6 after each step
    projected: list[float] = []
    loss_plus = float("nan")
    for i in range(queries):
        for name, p in named_params:  # judge > 0: move to y, then + eps k z
            p.data = copies[name] / beta + (1.0 - 1.0 / beta) * p.data
            p.data = p.data + draw_z(i, name, p) * eps * draw_k(i, name)
        loss_plus = float(closure())
        for name, p in named_params:  # judge < 0: - 2 eps k z
            p.data = p.data - 2.0 * draw_z(i, name, p) * eps * draw_k(i, name)
        loss_minus = float(closure())
        for name, p in named_params:  # judge == 0: + eps k z, then back from y to x
            p.data = p.data + draw_z(i, name, p) * eps * draw_k(i, name)
            if beta != 1.0:
                p.data = (p.data - copies[name] / beta) / (1.0 - 1.0 / beta)
        projected.append((loss_plus - loss_minus) / (2.0 * eps))
    buffers = {name: torch.zeros_like(p) for name, p in named_params}
    for i in range(queries):
        for name, p in named_params:
            buffers[name] += projected[i] * draw_z(i, name, p) * kernel(draw_k(i, name))
    for name, p in named_params:
        average = buffers[name] / queries
        norm = float(torch.linalg.vector_norm(average))  # their torch division gives inf at 0: no clip
        average = (1.0 if norm == 0.0 else min(1.0, clip_norm / norm)) * average
        copies[name] -= lr * average
        p.data = copies[name] / beta + (1.0 - 1.0 / beta) * p.data
    return loss_plus
