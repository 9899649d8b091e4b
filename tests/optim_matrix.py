"""The optimizer database every method joins (like torch's ``OptimizerInfo``).

Each :class:`MethodCase` says how to build the method's optimizer and with what settings it should solve
the common problems; ``tests/test_optimizer_matrix.py`` runs every generic test on every case. A new
method adds one entry here (and its own method-specific tests elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zotune
from zotune.core.optimizer import ZOOptimizer


@dataclass(frozen=True)
class MethodCase:
    name: str
    factory: Callable[..., ZOOptimizer]
    # options for the convex quadratic in tests (dimension 20, condition number 10)
    quadratic: dict[str, Any] = field(default_factory=dict)
    # options for the small MLP regression
    mlp: dict[str, Any] = field(default_factory=dict)
    # the estimator is unbiased on a quadratic (central differences of a quadratic are exact)
    unbiased_on_quadratic: bool = True
    # Var[g_hat_i] per query is at most variance_factor * (|g|^2 + 2 g_i^2): 1 for MeZO's estimator, the
    # second moment E[(r K(r))^2] of the random multiplier for KerZOO's (25/4 for its order-3 kernel)
    variance_factor: float = 1.0

    def build(self, params: Any, **options: Any) -> ZOOptimizer:
        return self.factory(params, **options)

    def __str__(self) -> str:
        return self.name


CASES: list[MethodCase] = [
    MethodCase("mezo", zotune.mezo, quadratic=dict(lr=0.01, eps=1e-3), mlp=dict(lr=1e-2, eps=1e-3)),
    MethodCase(
        "mezo-4q-uniform",
        lambda params, **kw: zotune.mezo(params, n_queries=4, sampler="uniform", **kw),
        quadratic=dict(lr=0.01, eps=1e-3),
        mlp=dict(lr=1e-2, eps=1e-3),
    ),
    MethodCase(
        "mezo-forward-rademacher",
        lambda params, **kw: zotune.mezo(params, difference="forward", sampler="rademacher", **kw),
        quadratic=dict(lr=0.01, eps=1e-4),
        mlp=dict(lr=1e-2, eps=1e-4),
        unbiased_on_quadratic=False,
    ),
    MethodCase(
        "mezo-torch-generator",
        lambda params, **kw: zotune.mezo(params, sampler="gaussian-torch", **kw),
        quadratic=dict(lr=0.01, eps=1e-3),
        mlp=dict(lr=1e-2, eps=1e-3),
    ),
]

# DiZO: MeZO plus the projection cycle every 50 steps (the official default), projecting every tensor
# (the common problems have no attention blocks). Cycles run in the quadratic, MLP and mean-estimate tests.
# The official eta_p = 2 is scaled for LLM losses; these problems' loss curvature along gamma is ~5, so
# eta_p = 2 overshoots to the clip bounds every cycle (measured: quadratic 0.05 of its start after 400
# steps instead of 5e-6): the matrix uses eta_p = 0.2.
CASES.append(
    MethodCase(
        "dizo",
        lambda params, **kw: zotune.dizo(params, projected="all", **kw),
        quadratic=dict(lr=0.01, eps=1e-3, lr_projection=0.2),
        mlp=dict(lr=1e-2, eps=1e-3, lr_projection=0.2),
    )
)

# PeZO (issue #6): the default pool (n = 2^16 covers these small problems: no aliasing), a pool smaller than
# the quadratic (n = 8 < d = 20, reused for 3 steps, fixed sqrt(3) scaling) and the hashed index map.
CASES += [
    MethodCase("pezo", zotune.pezo, quadratic=dict(lr=0.01, eps=1e-3), mlp=dict(lr=1e-2, eps=1e-3)),
    MethodCase(
        "pezo-pool8-refresh3-fixed",
        lambda params, **kw: zotune.pezo(params, pool_size=8, refresh_every=3, scaling="fixed", **kw),
        quadratic=dict(lr=0.01, eps=1e-3),
        mlp=dict(lr=1e-2, eps=1e-3),
    ),
    MethodCase(
        "pezo-hash-pool64",
        lambda params, **kw: zotune.pezo(params, pool_size=64, index_map="hash", **kw),
        quadratic=dict(lr=0.01, eps=1e-3),
        mlp=dict(lr=1e-2, eps=1e-3),
        unbiased_on_quadratic=False,  # hash collisions (~1/n per pair) alias gradient components
    ),
]

# KerZOO (issue #5). Its step multiplier r K(r) has second moment 25/4 (order 3) or 53/4 (order 5), so at
# n_queries = 1 the largest stable lr on the quadratic (0.002) cannot reach 1e-3 of the start in 400
# steps (measured 0.09); 8 queries per step bring the variance back to MeZO's scale. On a quadratic the
# central difference is exact and E[r K] = 1, so the estimator is unbiased there (so is the forward form:
# K is odd). The second case runs the other options: order 5, uniform directions, forward differences
# and a cosine-shrinking interval.
from zotune.algorithms.kerzoo import IntervalSchedule  # noqa: E402

CASES += [
    MethodCase(
        "kerzoo",
        zotune.kerzoo,
        quadratic=dict(lr=0.01, eps=1e-3, n_queries=8),
        mlp=dict(lr=5e-3, eps=1e-3),
        variance_factor=25 / 4,
    ),
    MethodCase(
        "kerzoo-order5-uniform-forward-cosine",
        lambda params, **kw: zotune.kerzoo(
            params,
            kernel_order=5,
            sampler="uniform",
            difference="forward",
            r_max=IntervalSchedule(1.0, 0.5, steps=500, kind="cosine"),
            **kw,
        ),
        quadratic=dict(lr=0.006, eps=1e-4, n_queries=8),
        mlp=dict(lr=2e-3, eps=1e-4),
        variance_factor=53 / 4,
    ),
]
