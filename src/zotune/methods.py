"""Named methods as compositions of the core parts, and the registry the CLI resolves names in.

A method is MeZO with some of its parts replaced or extended by *components*:

* an **estimator** component replaces the two-point estimator (KerZOO's kernel-weighted estimator);
* a **sampler** component replaces the Gaussian directions (PeZO's random-number reuse);
* a **transform** component appends to the update transforms (DiZO's projection).

So ``build_optimizer("kerzoo+pezo+dizo", params, lr=..., eps=...)`` gives KerZOO's estimator fed by PeZO's
sampler with DiZO's projection after each update, a combination none of the papers offers. Each method
module registers its component with :func:`register_component` and exposes a short alias function
(``kerzoo(...)``, ``pezo(...)``, ...) that calls :func:`compose`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from zotune.core.estimators import Estimator, TwoPointEstimator
from zotune.core.optimizer import ZOOptimizer
from zotune.core.samplers import Sampler
from zotune.core.transforms import DecoupledWeightDecay, LearningRate, Transform, matrices_only

ROLES = ("estimator", "sampler", "transform")


@dataclass(frozen=True)
class Component:
    """A part a method contributes.

    Attributes:
        name: the method name used in ``build_optimizer`` ("kerzoo", "pezo", "dizo", ...).
        role: "estimator", "sampler" or "transform".
        build: for an estimator, ``build(eps=, n_queries=, difference=, **options) -> Estimator``; for a
            sampler, ``build(**options) -> Sampler``; for a transform, ``build(**options) -> Transform``.
        options: the option names ``build`` accepts (besides the estimator's eps/n_queries/difference).
    """

    name: str
    role: str
    build: Callable[..., Any]
    options: frozenset[str]


_COMPONENTS: dict[str, Component] = {}
BASE_METHOD = "mezo"


def register_component(component: Component) -> None:
    """Make ``component.name`` usable in ``build_optimizer`` (alone or joined with '+')."""
    if component.role not in ROLES:
        raise ValueError(f"component role must be one of {ROLES}, got {component.role!r}")
    if component.name in _COMPONENTS or component.name == BASE_METHOD or "+" in component.name:
        raise ValueError(f"cannot register a method named {component.name!r}")
    _COMPONENTS[component.name] = component


def available_methods() -> list[str]:
    return [BASE_METHOD, *sorted(_COMPONENTS)]


def _parse(method: str) -> list[Component]:
    names = [part.strip() for part in method.split("+") if part.strip()]
    if not names:
        raise ValueError(f"empty method name; available methods: {', '.join(available_methods())}")
    unknown = [n for n in names if n != BASE_METHOD and n not in _COMPONENTS]
    if unknown:
        raise ValueError(
            f"unknown method {unknown[0]!r}; available methods: {', '.join(available_methods())} "
            "(join several with '+', e.g. 'kerzoo+pezo')"
        )
    components = [_COMPONENTS[n] for n in names if n != BASE_METHOD]
    for role in ("estimator", "sampler"):
        taken = [c.name for c in components if c.role == role]
        if len(taken) > 1:
            raise ValueError(f"methods {taken} both replace the {role}; combine at most one of them")
    return components


def compose(
    params: Iterable[Any],
    components: Sequence[Component] = (),
    *,
    lr: float = 1e-6,
    eps: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    n_queries: int = 1,
    difference: str = "central",
    sampler: str | Sampler = "gaussian",
    decay_mask: Callable[..., bool] = matrices_only,
    extra_transforms: Iterable[Transform] = (),
    record_trajectory: bool = False,
    **options: Any,
) -> ZOOptimizer:
    """MeZO's parts with ``components`` swapped in; ``options`` go to the component that accepts them."""
    accepted = {name: c for c in components for name in c.options}
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        names = "+".join([BASE_METHOD, *(c.name for c in components)])
        raise ValueError(f"unknown option(s) {unknown} for method {names!r}; its own options are {sorted(accepted)}")

    def own(component: Component) -> dict[str, Any]:
        return {k: v for k, v in options.items() if accepted[k] is component}

    estimator: Estimator = TwoPointEstimator(eps=eps, n_queries=n_queries, difference=difference)
    transforms: list[Transform] = [LearningRate(), DecoupledWeightDecay(decay_mask)]
    for component in components:
        if component.role == "estimator":
            estimator = component.build(eps=eps, n_queries=n_queries, difference=difference, **own(component))
        elif component.role == "sampler":
            if sampler != "gaussian":
                raise ValueError(f"method {component.name!r} provides the sampler; do not also pass sampler=")
            sampler = component.build(**own(component))
        else:
            transforms.append(component.build(**own(component)))
    return ZOOptimizer(
        params,
        lr=lr,
        estimator=estimator,
        sampler=sampler,
        transforms=[*transforms, *extra_transforms],
        weight_decay=weight_decay,
        seed=seed,
        record_trajectory=record_trajectory,
    )


def mezo(
    params: Iterable[Any],
    lr: float = 1e-6,
    eps: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    n_queries: int = 1,
    **options: Any,
) -> ZOOptimizer:
    """MeZO (Malladi et al., 2023): in-place ZO-SGD with the two-point SPSA estimator.

    Per step, with z ~ N(0, I) regenerated from the seed and c = (L(theta + eps z) - L(theta - eps z)) / (2 eps):

        theta <- theta - lr * (c z + weight_decay * theta)

    averaged over ``n_queries`` directions (n-SPSA) when ``n_queries > 1``. Defaults follow the paper's
    full fine-tuning setting (eps = 1e-3, no weight decay, constant lr; its grid is lr in {1e-6, 1e-7} for
    OPT). Further options (see :func:`compose`): ``difference`` ("central" or "forward"), ``sampler``
    (default: zotune's counter-based "gaussian"; "gaussian-torch" draws with ``torch.Generator``),
    ``decay_mask`` (default: tensors with 2+ dimensions), ``extra_transforms``, ``record_trajectory``.
    """
    return compose(params, (), lr=lr, eps=eps, weight_decay=weight_decay, seed=seed, n_queries=n_queries, **options)


def build_optimizer(method: str, params: Iterable[Any], **options: Any) -> ZOOptimizer:
    """The optimizer of a method name, e.g. ``build_optimizer("kerzoo+pezo", model.parameters(), lr=1e-6)``."""
    return compose(params, _parse(method), **options)
