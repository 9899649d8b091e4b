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
