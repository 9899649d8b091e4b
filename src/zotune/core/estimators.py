"""Estimators: which losses to query and how to turn them into an implicit gradient.

An estimator moves the parameters along directions through a :class:`Prober` (handed to it by the
optimizer), calls the closure, and returns an :class:`Estimate`: one coefficient c_q per query q. An
estimator may also give every tensor l its own probe radius factor r_{q,l} and update weight w_{q,l}
(:meth:`Estimator.tensor_factors`), regenerated from the seed like z itself, so the gradient estimate of
tensor l is

    g_hat_l = sum_q c_q * w_{q,l} * z_{q,l},       probed at theta_l +- h_q * r_{q,l} * z_{q,l},

held implicitly as (seed, coefficients) and never materialised: a step's record stays a few scalars per
query, and replay and data parallelism regenerate r and w as they regenerate z. MeZO has r = w = 1. An estimator may leave the parameters
displaced by ``pending_scale * z_q`` for its last query; the optimizer then folds that restore into the
update pass, which saves one regeneration of z per step (three passes instead of MeZO's four).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol


class Prober(Protocol):
    """What the optimizer lets an estimator do during one step."""

    step: int
    base_seed: int

    def displace(self, query: int, scale: float) -> None:
        """theta_l <- theta_l + scale * r_{query,l} * z_{query,l} for every trainable tensor l (in place)."""

    def loss(self) -> float:
        """The closure's loss at the current parameters, as a Python float (one forward pass)."""


@dataclass(frozen=True)
class Estimate:
    """The result of one estimator call.

    Attributes:
        coefficients: c_q for each query; the gradient estimate is sum_q c_q z_q.
        loss: the loss to report for this step (the mean of the probe losses).
        pending: ``(query, scale)`` if the parameters are still displaced by ``scale * r_{query,l} * z_query``.
        finite: False if any probe loss was NaN or infinite (the coefficients are then zero).
    """

    coefficients: tuple[float, ...]
    loss: float
    pending: tuple[int, float] | None
    finite: bool = True


class Estimator(ABC):
    """Queries losses along directions and returns an :class:`Estimate`."""

    n_queries: int = 1
    # True if tensor_factors is not (1, 1) everywhere (the optimizer then asks for it per tensor)
    per_tensor: bool = False

    @abstractmethod
    def estimate(self, prober: Prober) -> Estimate: ...

    def tensor_factors(self, base_seed: int, step: int, query: int, param_id: int) -> tuple[float, float]:
        """(r_{q,l}, w_{q,l}): tensor l's probe radius factor and update weight in query q; a pure
        function of its arguments (resume, replay and data parallelism regenerate it)."""
        del base_seed, step, query, param_id
        return 1.0, 1.0

    def config(self) -> dict[str, Any]:
        """The estimator's settings (saved in the optimizer's state dict, compared on load)."""
        return {}

    def forward_passes_per_step(self) -> int:
        """Closure calls per step (used for budgets and reported in metrics)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class TwoPointEstimator(Estimator):
    """The two-point (SPSA) estimator of MeZO, averaged over ``n_queries`` directions.

    Central differences (default), per query q with radius h_q and weight w_q:

        c_q = w_q * (L(theta + h_q z_q) - L(theta - h_q z_q)) / (2 eps) / n_queries

    One-sided (forward) differences share one unperturbed loss L(theta) between the queries:

        c_q = w_q * (L(theta + h_q z_q) - L(theta)) / eps / n_queries

    For MeZO h_q = eps and w_q = 1, so E[c z] = grad L + O(eps^2) (central) or + O(eps) (forward).
    Subclasses change :meth:`radius_and_weight` (KerZOO draws h_q = eps * r_q and w_q = K(r_q)).

    Args:
        eps: the perturbation scale eps > 0.
        n_queries: directions averaged per step (n-SPSA).
        difference: ``"central"`` (2 forwards per query) or ``"forward"`` (1 per query, plus 1 shared).
    """

    def __init__(self, eps: float = 1e-3, n_queries: int = 1, difference: str = "central") -> None:
        if not eps > 0 or not math.isfinite(eps):
            raise ValueError(f"eps must be a finite number > 0, got {eps}")
        if int(n_queries) != n_queries or n_queries < 1:
            raise ValueError(f"n_queries must be an integer >= 1, got {n_queries}")
        if difference not in ("central", "forward"):
            raise ValueError(f"difference must be 'central' or 'forward', got {difference!r}")
        self.eps = float(eps)
        self.n_queries = int(n_queries)
        self.difference = difference

    def config(self) -> dict[str, Any]:
        return {"eps": self.eps, "n_queries": self.n_queries, "difference": self.difference}

    def radius_and_weight(self, prober: Prober, query: int) -> tuple[float, float]:
        """(h_q, w_q) for query q; MeZO uses (eps, 1)."""
        del prober, query
        return self.eps, 1.0

    def forward_passes_per_step(self) -> int:
        return 2 * self.n_queries if self.difference == "central" else self.n_queries + 1

    def estimate(self, prober: Prober) -> Estimate:
        if self.difference == "central":
            return self._central(prober)
        return self._forward(prober)

    def _central(self, prober: Prober) -> Estimate:
        n = self.n_queries
        coefficients: list[float] = []
        losses: list[float] = []
        pending: tuple[int, float] | None = None
        for q in range(n):
            h, w = self.radius_and_weight(prober, q)
            prober.displace(q, h)
            loss_plus = prober.loss()
            prober.displace(q, -2.0 * h)
            loss_minus = prober.loss()
            if q < n - 1:
                prober.displace(q, h)  # the next query must start from theta itself
            else:
                pending = (q, h)  # restored together with the update
            losses += [loss_plus, loss_minus]
            coefficients.append(w * (loss_plus - loss_minus) / (2.0 * self.eps) / n)
        return _finish(coefficients, losses, pending)

    def _forward(self, prober: Prober) -> Estimate:
        n = self.n_queries
        loss_zero = prober.loss()
        coefficients: list[float] = []
        losses = [loss_zero]
        pending: tuple[int, float] | None = None
        for q in range(n):
            h, w = self.radius_and_weight(prober, q)
            prober.displace(q, h)
            loss_plus = prober.loss()
            if q < n - 1:
                prober.displace(q, -h)
            else:
                pending = (q, -h)
            losses.append(loss_plus)
            coefficients.append(w * (loss_plus - loss_zero) / self.eps / n)
        # the reported loss is the unperturbed one, which this scheme measures exactly
        estimate = _finish(coefficients, losses, pending)
        return Estimate(estimate.coefficients, loss_zero, pending, estimate.finite)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps}, n_queries={self.n_queries}, difference={self.difference!r})"


def _finish(coefficients: list[float], losses: list[float], pending: tuple[int, float] | None) -> Estimate:
    finite = all(math.isfinite(x) for x in losses)
    if not finite:
        # a NaN/inf loss carries no gradient information: keep theta, skip the update
        coefficients = [0.0] * len(coefficients)
    loss = sum(losses) / len(losses)
    return Estimate(tuple(coefficients), loss, pending, finite)
