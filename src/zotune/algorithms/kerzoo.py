"""KerZOO as its authors run it (Mi et al., 2025, arXiv 2505.18886).

Source: the authors' code, GitHub ``Rainbow0427/zo_acc`` at commit a0b9f8d (a fork of MeZO's
``large_models``): ``trainer.py`` ``kernel_function`` (line ~686), ``zo_perturb_parameters`` (~1913),
``zo_step`` (~2104), ``zo_update`` (~2169), ``beta_k`` (~1225). Read there and re-written here; the notes are
in ``shared/papers/kerzoo.md``.

One step t (t from 0; eta the learning rate, eps the probe scale), for every trainable tensor l:

1. **Three queries** q = 0, 1, 2 (six forward passes), each with its own z_{q,l} ~ N(0, I) and a scalar
   drawn **per tensor**: k_{q,l} = a_t (2u - 1), u ~ U[0, 1), on the **shrinking interval**
   a_t = max(a_0 - t / T, 1e-4). The authors hard-code T = 4000 (their run length) and a_0 = 1 (their
   README recommends 1/2, which their commented-out code writes as max(1/2 - t/4000, 1e-4)).
2. **Probes at the averaged point** y = c / beta_t + (1 - 1/beta_t) x (below), moved by eps k_{q,l} z_{q,l}:
   p_q = (L(y + eps k_q z_q) - L(y - eps k_q z_q)) / (2 eps)        (divided by 2 eps, not 2 eps k).
3. **Unnormalised kernel** K(k) = 15 k (5 - 7 k^2) (their ``kernel_function(k, 1)``), per tensor:
   g_l = (1/3) sum_q p_q K(k_{q,l}) z_{q,l}.
4. **Per-tensor L2 clip**: g_l <- min(1, C / ||g_l||) g_l with C = 4e5 ("may need change as model changes").
5. **Two-sequence averaging** (the "accelerated" part) with beta_t = 1 + t / 6: besides the weights x the
   method keeps a second sequence c (initialised to theta_0) and updates
   c <- c - eta g,   x <- c / beta_t + (1 - 1/beta_t) x.

What zotune changes, none of which changes the arithmetic beyond rounding:

* **The averaging stores d = x - c, not c.** Then y = x - d / beta_t, and the update is
  w = d + eta g,  x <- x - w / beta_t,  d <- (1 - 1/beta_t) w: every pass is in place, and moving from y
  back to x needs no division by 1 - 1/beta_t (the authors' restore, undefined at beta = 1). d is one
  **parameter-sized buffer**: the method's real extra memory (``optimizer.state_bytes()`` reports it). The
  authors' dense gradient buffer (another copy) is not needed: each tensor's g_l is summed in a scratch of
  that tensor's size, clipped, and applied.
* x is moved to y once per step, not once per query (the authors move there and back around each query).
* z and k come from zotune's counter-based streams keyed by (seed, step, query, tensor), not from
  ``torch.manual_seed(s - q)``, so they are regenerated exactly for replay and resume.
* Weight decay is not in the authors' code and does not combine with the averaging here (refused).

Consequences (``shared/papers/kerzoo.md``): with K unnormalised, E[k K(k)] = 25 a^2 - 21 a^4 (4 at a = 1,
about 7.4 near a = 0.77, -> 0 as a -> 0), so the shrinking interval is also an implicit warm-up-then-decay
of the learning rate, and the eps^2 bias cancels exactly only at a = 1. Compare with MeZO at **equal
forward passes** (six per step here). zotune's earlier moment-normalised reading stays as
``kerzoo-unbiased`` (:mod:`zotune.algorithms.kerzoo_unbiased`).

Example:
    >>> opt = zotune.kerzoo(model.named_parameters(), lr=1e-6, eps=1e-3, horizon=4000)
    >>> loss = opt.step(lambda: loss_fn(model(x), y))
    >>> opt.state_bytes()                    # {'averaging.offset': bytes of the d copy}
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from zotune.core.estimators import TwoPointEstimator
from zotune.core.optimizer import ZOOptimizer
from zotune.core.seeds import tensor_scalar_key, unit_uniform
from zotune.core.transforms import TensorUpdate, Transform
from zotune.methods import Component, Parts, Setup, compose, register_component

if TYPE_CHECKING:  # pragma: no cover
    from zotune.core.optimizer import StepContext, Trainable

AUTHORS_HORIZON = 4000  # T, hard-coded in the authors' trainer (their run length)
AUTHORS_MIN_INTERVAL = 1e-4
AUTHORS_CLIP_NORM = 4e5
AUTHORS_AVERAGING_RATE = 1.0 / 6.0  # beta_t = 1 + t / 6
AUTHORS_QUERIES = 3


def authors_kernel(k: float) -> float:
    """K(k) = 15 k (5 - 7 k^2): the authors' ``kernel_function(k, t=1)``, unnormalised."""
    return 15.0 * k * (5.0 - 7.0 * k * k)


def _positive(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0{' or None (off)' if allow_none else ''}, got {value!r}")
    return float(value)


class KerZOOEstimator(TwoPointEstimator):
    """The authors' estimator: per-tensor k on a shrinking interval, unnormalised kernel, three queries.

    Tensor l in query q is probed at radius eps k_{q,l} and weighted by K(k_{q,l}); the coefficient is
    p_q / n_queries with p_q = (L+ - L-) / (2 eps), so g_l = (1/n) sum_q p_q K(k_{q,l}) z_{q,l}.

    Args:
        eps: the probe scale (the authors' ``zo_eps``).
        n_queries: queries per step (the authors: 3).
        horizon: T of a_t = max(a_0 - t / T, min_interval) (the authors hard-code 4000).
        initial_interval: a_0 (the authors' code: 1; their README recommends 1/2).
        min_interval: the floor of a_t (the authors: 1e-4).
    """

    per_tensor = True

    def __init__(
        self,
        eps: float = 1e-3,
        n_queries: int = AUTHORS_QUERIES,
        difference: str = "central",
        *,
        horizon: int = AUTHORS_HORIZON,
        initial_interval: float = 1.0,
        min_interval: float = AUTHORS_MIN_INTERVAL,
    ) -> None:
        super().__init__(eps=eps, n_queries=n_queries, difference=difference)
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon (T of the shrinking interval) must be an integer >= 1, got {horizon!r}")
        self.horizon = horizon
        self.initial_interval = _positive("initial_interval", initial_interval)
        self.min_interval = _positive("min_interval", min_interval)

    def interval(self, step: int) -> float:
        """a_t = max(a_0 - t / T, min_interval)."""
        return max(self.initial_interval - step / self.horizon, self.min_interval)  # type: ignore[operator]

    def draw_k(self, base_seed: int, step: int, query: int, param_id: int) -> float:
        """k_{q,l} = a_t (2u - 1), u from the counter-based key of (seed, step, query, tensor)."""
        u = unit_uniform(tensor_scalar_key(base_seed, step, query, param_id))
        return self.interval(step) * (2.0 * u - 1.0)

    def tensor_factors(self, base_seed: int, step: int, query: int, param_id: int) -> tuple[float, float]:
        k = self.draw_k(base_seed, step, query, param_id)
        return k, authors_kernel(k)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "horizon": self.horizon,
            "initial_interval": self.initial_interval,
            "min_interval": self.min_interval,
        }

    def __repr__(self) -> str:
        return (
            f"KerZOOEstimator(eps={self.eps}, n_queries={self.n_queries}, horizon={self.horizon}, "
            f"initial_interval={self.initial_interval}, min_interval={self.min_interval})"
        )


class TensorNormClip(Transform):
    """g_l <- min(1, max_norm / ||g_l||) g_l for every tensor (a gradient-stage transform).

    The norm needs the numbers, so g_l is summed into a scratch of the tensor's size (no lasting memory).
    """

    name = "clip"
    stage = "gradient"
    materializes = True  # sums the estimate into a dense buffer (the optimizer announces those sums)

    def __init__(self, max_norm: float = AUTHORS_CLIP_NORM) -> None:
        self.max_norm = _positive("clip_norm", max_norm)

    def config(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm}

    def update(self, ctx: StepContext, item: Trainable, update: TensorUpdate) -> TensorUpdate:
        if update.is_zero():
            return update
        dense = ctx.materialize(item, update)
        # min(1, max_norm / ||u||) computed on the device: reading the norm on the host was a blocking
        # transfer per tensor on a GPU. The scale is the float64 quotient the host computed, and scaling by
        # 1 leaves every bit, so the result is the same; a zero norm gives inf, clamped to 1.
        norm = torch.linalg.vector_norm(dense).double()
        dense.mul_(torch.clamp(self.max_norm / norm, max=1.0))  # type: ignore[operator]
        return TensorUpdate([], dense, update.decay)

    def __repr__(self) -> str:
        return f"TensorNormClip(max_norm={self.max_norm})"


class TwoSequenceAveraging(Transform):
    """KerZOO's averaging, with a **parameter-sized buffer** d = x - c per tensor (an update-stage transform).

    With beta_t = 1 + rate t and the step's update u = -eta g (after the learning rate):

        probe point   y = x - d / beta_t                                  (begin_step)
        update        w = d - u,   x <- x - w / beta_t = y + u / beta_t,   d <- (1 - 1/beta_t) w

    which is the authors' c <- c + u, x <- c / beta_t + (1 - 1/beta_t) x with c = x - d.
    """

    name = "averaging"
    stage = "update"
    materializes = True

    def __init__(self, rate: float = AUTHORS_AVERAGING_RATE) -> None:
        self.rate = _positive("averaging_rate", rate)

    def config(self) -> dict[str, Any]:
        return {"rate": self.rate}

    def beta(self, step: int) -> float:
        return 1.0 + self.rate * step  # type: ignore[operator]

    def bind(self, optimizer: ZOOptimizer) -> None:
        for item in optimizer.trainable():  # the buffer exists (and is counted) from the start
            self._offset(optimizer, item.param)

    def _offset(self, optimizer: ZOOptimizer, param: torch.Tensor) -> torch.Tensor:
        return self.buffer(optimizer, param, "offset", lambda: torch.zeros_like(param, memory_format=torch.contiguous_format))

    def _shift(self, ctx: StepContext, sign: float) -> None:
        beta = self.beta(ctx.step)
        if beta == 1.0:
            return  # y = x (and d = 0) at the first step
        for item in ctx.params:
            item.param.detach().add_(self._offset(ctx.optimizer, item.param), alpha=sign / beta)

    def begin_step(self, ctx: StepContext) -> None:
        self._shift(ctx, -1.0)  # x -> y

    def cancel_step(self, ctx: StepContext) -> None:
        self._shift(ctx, +1.0)  # y -> x

    def update(self, ctx: StepContext, item: Trainable, update: TensorUpdate) -> TensorUpdate:
        if update.decay != 1.0:
            raise ValueError("KerZOO's two-sequence averaging does not combine with weight decay (set weight_decay=0)")
        beta = self.beta(ctx.step)
        offset = self._offset(ctx.optimizer, item.param)
        if update.is_zero():
            offset.mul_(1.0 - 1.0 / beta)
            return update
        dense = ctx.materialize(item, update)
        offset.sub_(dense.to(offset.dtype)).mul_(1.0 - 1.0 / beta)  # d <- (1 - 1/beta)(d - u)
        return TensorUpdate([], dense.mul_(1.0 / beta), 1.0)  # from y: x_new = y + u / beta

    def __repr__(self) -> str:
        return f"TwoSequenceAveraging(rate={self.rate})"


_OPTIONS = frozenset({"horizon", "initial_interval", "min_interval", "clip_norm", "averaging_rate"})


def _build(
    setup: Setup,
    horizon: int | None = None,
    initial_interval: float = 1.0,
    min_interval: float = AUTHORS_MIN_INTERVAL,
    clip_norm: float | None = AUTHORS_CLIP_NORM,
    averaging_rate: float | None = AUTHORS_AVERAGING_RATE,
) -> Parts:
    if horizon is None:  # the run's length when the runner knows it, else the authors' 4000
        horizon = setup.total_steps if setup.total_steps else AUTHORS_HORIZON
    estimator = KerZOOEstimator(
        eps=setup.eps,
        n_queries=AUTHORS_QUERIES if setup.n_queries is None else setup.n_queries,
        difference=setup.difference,
        horizon=horizon,
        initial_interval=initial_interval,
        min_interval=min_interval,
    )
    transforms: list[Transform] = []
    if clip_norm is not None:
        transforms.append(TensorNormClip(clip_norm))
    if averaging_rate is not None:
        transforms.append(TwoSequenceAveraging(averaging_rate))
    return Parts(estimator=estimator, transforms=tuple(transforms))


COMPONENT = Component(
    name="kerzoo",
    build=_build,
    options=_OPTIONS,
    replaces=frozenset({"estimator"}),
    summary="the authors' KerZOO: 3 queries, per-tensor k on a shrinking interval, 15k(5-7k^2), clip 4e5, "
    "two-sequence averaging (+1 parameter copy)",
)
register_component(COMPONENT)


def kerzoo(
    params: Iterable[Any],
    lr: float = 1e-6,
    eps: float = 1e-3,
    horizon: int | None = None,
    initial_interval: float = 1.0,
    min_interval: float = AUTHORS_MIN_INTERVAL,
    clip_norm: float | None = AUTHORS_CLIP_NORM,
    averaging_rate: float | None = AUTHORS_AVERAGING_RATE,
    seed: int = 0,
    n_queries: int | None = None,
    **options: Any,
) -> ZOOptimizer:
    """The authors' KerZOO (see the module docstring for the step and its source).

    Defaults are the authors': lr 1e-6 and eps 1e-3 (their OPT-2.7B example), three queries, T = 4000
    (``horizon``; ``zotune train`` sets it to the run's steps), a_0 = 1 (``initial_interval``; their README
    recommends 0.5), the per-tensor clip at 4e5 (``clip_norm``; None turns it off) and beta_t = 1 + t/6
    (``averaging_rate``; None turns the averaging off and saves its parameter-sized buffer). Other options
    go to :func:`zotune.methods.compose` (``sampler``, ``record_trajectory``, ...).
    """
    return compose(
        params,
        (COMPONENT,),
        lr=lr,
        eps=eps,
        seed=seed,
        n_queries=n_queries,
        kerzoo=dict(
            horizon=horizon,
            initial_interval=initial_interval,
            min_interval=min_interval,
            clip_norm=clip_norm,
            averaging_rate=averaging_rate,
        ),
        **options,
    )


__all__ = [
    "COMPONENT",
    "KerZOOEstimator",
    "TensorNormClip",
    "TwoSequenceAveraging",
    "authors_kernel",
    "kerzoo",
]
