"""MeZO with momentum, and ZO-Adam: gradient-stage transforms over the implicit estimate g_hat.

**Momentum** (method ``momentum``), two ways to hold the same first moment. With g_t the step's estimate
and beta the decay, both give the bias-corrected exponential average

    m_t = sum_{i=0..M-1} beta^i g_{t-i} / sum_{i=0..M-1} beta^i,         theta <- theta - lr m_t,

* ``window=K`` (default 10): **no parameter-sized buffer**. Only the last K steps' coefficients are kept
  (a few scalars each); their directions are regenerated from the seeds at every update, so M = min(K,
  steps so far) and an update costs K passes over the weights instead of one. This is zotitan's
  "seed_window" momentum (PyPI ``zotitan`` 0.1.0, ``train_zo.py`` ``_reconstruct_momentum_from_seeds``:
  weights beta^i normalised to sum 1), without its 1e-12 in the normaliser.
* ``window=0``: a stored buffer, m <- beta m + (1 - beta) g, applied as m / (1 - beta^t), t counting this
  tensor's updates (zotitan's
  "stored_ema"; **one parameter-sized buffer**). With K at least the number of steps the two are equal
  (the normalised weights are exactly (1 - beta) beta^i / (1 - beta^t)); a test holds them to that.

ZO-Bench's ZO-SGD-MMT (``ZO-Bench/ZO-LLM`` bf210fa, ``trainer.py``: ``torch.optim.SGD(momentum=mu)`` fed
g_hat one tensor at a time) is the same buffer without the (1 - beta) factor and the bias correction, i.e.
our ``window=0`` with the lr scaled by 1 / (1 - beta) after the first steps.

**ZO-Adam** (method ``zo-adam``), as ZO-Bench defines it (``trainer.py``: ``torch.optim.Adam(params, lr)``
with its defaults, fed g_hat one tensor at a time): with t counting this tensor's updates,

    m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2,
    theta <- theta - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps_adam),

b1 = 0.9, b2 = 0.999, eps_adam = 1e-8: **two parameter-sized buffers** (m, v), as ZO-Bench's memory
tables count them. Weight decay here is zotune's decoupled one (AdamW-style, off by default); ZO-Bench
passes none.

Both are plain transforms, so they compose with any estimator and sampler (``kerzoo-unbiased+momentum``,
``pezo+zo-adam``). A non-finite step changes none of their state.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from zotune.core.optimizer import ZOOptimizer
from zotune.core.transforms import TensorUpdate, Transform
from zotune.methods import Component, Parts, Setup, compose, register_component

if TYPE_CHECKING:  # pragma: no cover
    from zotune.core.optimizer import StepContext, Trainable


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _count(ctx: StepContext, item: Trainable, key: str) -> int:
    """This tensor's number of updates including the current one (kept in ``optimizer.state[param]``, so a
    tensor trained only from some step on starts its bias correction there, as torch.optim does)."""
    state = ctx.optimizer.state[item.param]
    state[key] = int(state.get(key, 0)) + 1
    return state[key]


class Momentum(Transform):
    """Bias-corrected momentum over g_hat, rebuilt from the last ``window`` steps' seeds (``window > 0``,
    no parameter-sized state) or kept in a buffer (``window=0``, **one parameter-sized buffer**)."""

    name = "momentum"
    stage = "gradient"
    materializes = True  # sums the estimate into a dense buffer (the optimizer announces those sums)

    def __init__(self, beta: float = 0.9, window: int = 10) -> None:
        self.beta = _fraction("beta", beta)
        if isinstance(window, bool) or not isinstance(window, int) or window < 0:
            raise ValueError(f"window must be an integer >= 0 (0: a stored buffer), got {window!r}")
        self.window = window
        self.keeps_terms = window > 0  # rebuilt from seeds: the update stays a sum of seeded terms
        self.history: deque[tuple[int, tuple[float, ...]]] = deque(maxlen=max(window - 1, 1))

    def bind(self, optimizer: ZOOptimizer) -> None:
        if not self.window:
            return
        before = optimizer.transforms[: optimizer.transforms.index(self)]
        dense = [repr(t) for t in before if not t.keeps_terms]
        if dense:
            raise ValueError(
                f"momentum rebuilt from seeds (window={self.window}) needs the raw estimate, but {dense[0]} comes "
                "before it: name momentum first (e.g. 'momentum+kerzoo') or keep a buffer (window=0)"
            )

    def config(self) -> dict[str, Any]:
        return {"beta": self.beta, "window": self.window}

    def update(self, ctx: StepContext, item: Trainable, update: TensorUpdate) -> TensorUpdate:
        if self.window:
            return self._from_seeds(ctx, item, update)
        return self._from_buffer(ctx, item, update)

    def _from_seeds(self, ctx: StepContext, item: Trainable, update: TensorUpdate) -> TensorUpdate:
        if update.dense is not None:
            raise ValueError("momentum rebuilt from seeds needs the raw estimate: put it before any clip")
        past = list(reversed(self.history))  # newest first
        weights = [self.beta**i for i in range(len(past) + 1)]
        total = sum(weights)
        terms = [(d, a * weights[0] / total) for d, a in update.terms]
        for weight, (step, coefficients) in zip(weights[1:], past, strict=True):
            old = ctx.gradient(item, coefficients, step)
            terms += [(d, a * weight / total) for d, a in old.terms]
        return TensorUpdate(terms, None, update.decay)

    def _from_buffer(self, ctx: StepContext, item: Trainable, update: TensorUpdate) -> TensorUpdate:
        param = item.param
        buffer = self.buffer(ctx.optimizer, param, "buffer", lambda: torch.zeros_like(param, memory_format=torch.contiguous_format))
        dense = ctx.materialize(item, update)
        buffer.mul_(self.beta).add_(dense.to(buffer.dtype), alpha=1.0 - self.beta)
        correction = 1.0 - self.beta ** _count(ctx, item, "momentum.step")
        dense.copy_(buffer).div_(correction)
        return TensorUpdate([], dense, update.decay)

    def end_step(self, ctx: StepContext) -> None:
        if self.window > 1:
            self.history.append((ctx.step, tuple(ctx.coefficients)))

    def state_dict(self) -> dict[str, Any]:
        return {"history": [(s, list(c)) for s, c in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.clear()
        self.history.extend((int(s), tuple(float(x) for x in c)) for s, c in state["history"])

    def __repr__(self) -> str:
        return f"Momentum(beta={self.beta}, window={self.window})"


class Adam(Transform):
    """ZO-Adam's scaling (ZO-Bench: ``torch.optim.Adam`` on g_hat), with **two parameter-sized buffers**."""

    name = "adam"
    stage = "gradient"
    materializes = True  # sums the estimate into a dense buffer (the optimizer announces those sums)

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps_adam: float = 1e-8) -> None:
        self.beta1 = _fraction("beta1", beta1)
        self.beta2 = _fraction("beta2", beta2)
        if isinstance(eps_adam, bool) or not isinstance(eps_adam, (int, float)) or not math.isfinite(eps_adam) or eps_adam <= 0:
            raise ValueError(f"eps_adam must be a finite number > 0, got {eps_adam!r}")
        self.eps_adam = float(eps_adam)

    def config(self) -> dict[str, Any]:
        return {"beta1": self.beta1, "beta2": self.beta2, "eps_adam": self.eps_adam}

    def update(self, ctx: StepContext, item: Trainable, update: TensorUpdate) -> TensorUpdate:
        param = item.param
        zeros = lambda: torch.zeros_like(param, memory_format=torch.contiguous_format)  # noqa: E731
        exp_avg = self.buffer(ctx.optimizer, param, "exp_avg", zeros)
        exp_avg_sq = self.buffer(ctx.optimizer, param, "exp_avg_sq", zeros)
        grad = ctx.materialize(item, update)
        g = grad.to(exp_avg.dtype)
        exp_avg.mul_(self.beta1).add_(g, alpha=1.0 - self.beta1)
        exp_avg_sq.mul_(self.beta2).addcmul_(g, g, value=1.0 - self.beta2)
        t = _count(ctx, item, "adam.step")  # per tensor, as torch.optim.Adam's state["step"]
        bias1 = 1.0 - self.beta1**t
        bias2 = 1.0 - self.beta2**t
        # the same arithmetic as torch.optim.Adam's single-tensor path: m / b1 / (sqrt(v) / sqrt(b2) + eps)
        denominator = (exp_avg_sq.sqrt() / math.sqrt(bias2)).add_(self.eps_adam)
        torch.div(exp_avg, denominator, out=denominator)
        grad.copy_(denominator).div_(bias1)
        return TensorUpdate([], grad, update.decay)

    def __repr__(self) -> str:
        return f"Adam(beta1={self.beta1}, beta2={self.beta2}, eps_adam={self.eps_adam})"


def _build_momentum(setup: Setup, **options: Any) -> Parts:
    del setup
    return Parts(transforms=(Momentum(**options),))


def _build_adam(setup: Setup, **options: Any) -> Parts:
    del setup
    return Parts(transforms=(Adam(**options),))


MOMENTUM = Component(
    "momentum",
    build=_build_momentum,
    options=frozenset({"beta", "window"}),
    summary="MeZO with momentum: rebuilt from the last `window` steps' seeds (no buffer), or a buffer (window=0)",
)
ZO_ADAM = Component(
    "zo-adam",
    build=_build_adam,
    options=frozenset({"beta1", "beta2", "eps_adam"}),
    summary="ZO-Adam as ZO-Bench defines it: torch.optim.Adam's scaling of g_hat (+2 parameter copies)",
)
register_component(MOMENTUM)
register_component(ZO_ADAM)


def mezo_momentum(
    params: Iterable[Any], lr: float = 1e-6, eps: float = 1e-3, beta: float = 0.9, window: int = 10, **options: Any
) -> ZOOptimizer:
    """MeZO with momentum (see the module docstring); ``window=0`` keeps a buffer instead of seeds."""
    return compose(params, (MOMENTUM,), lr=lr, eps=eps, momentum=dict(beta=beta, window=window), **options)


def zo_adam(
    params: Iterable[Any],
    lr: float = 1e-6,
    eps: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps_adam: float = 1e-8,
    **options: Any,
) -> ZOOptimizer:
    """ZO-Adam as ZO-Bench defines it (see the module docstring)."""
    return compose(params, (ZO_ADAM,), lr=lr, eps=eps, zo_adam=dict(beta1=beta1, beta2=beta2, eps_adam=eps_adam), **options)


__all__ = ["MOMENTUM", "ZO_ADAM", "Adam", "Momentum", "mezo_momentum", "zo_adam"]
