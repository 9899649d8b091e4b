"""Named methods as compositions of the core parts, and the registry the CLI resolves names in.

A method is MeZO with some of its parts replaced or extended by *components*. A component may give

* an **estimator** (KerZOO's kernel-weighted estimator with per-tensor radii),
* a **sampler** (PeZO's hardware-style random numbers),
* **transforms** for the update chain (KerZOO's clip and two-sequence averaging, momentum, Adam, DiZO's
  projection), each placed by its ``stage``: gradient-stage ones before the learning rate, update-stage
  ones after the learning rate and weight decay.

So ``build_optimizer("kerzoo+pezo+dizo", params, lr=...)`` gives KerZOO's estimator and averaging fed by
PeZO's generators with DiZO's projection after each update, a combination none of the papers offers.

**Options per component.** Each component has its own options. Pass them nested under the component's
name (``kerzoo={"clip_norm": 1e5}``, or ``**{"kerzoo-unbiased": {...}}`` for a name with a hyphen; an
underscore also works), or flat when exactly one component of the method takes that name
(``clip_norm=1e5``); a flat name two components take is refused as ambiguous.

**Inputs from the runner.** A component may use two things only the training loop knows, handed to every
component alike (the loop never asks which method it runs):

* ``total_steps``: the run's length (KerZOO's shrinking interval ends there);
* ``fresh_closure(step, index) -> closure``: a loss on a fresh batch of training data, distinct from the
  step's batch (DiZO's projection search draws one per search iteration).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zotune.core.distributed import LossSync
from zotune.core.estimators import Estimator, TwoPointEstimator
from zotune.core.optimizer import ZOOptimizer
from zotune.core.samplers import Sampler
from zotune.core.transforms import STAGES, DecoupledWeightDecay, LearningRate, Transform, matrices_only

FreshClosure = Callable[[int, int], Callable[[], Any]]


@dataclass(frozen=True)
class Setup:
    """What every component's ``build`` receives besides its own options.

    ``n_queries`` is None when the user left it to the method (the estimator's default applies); parts
    built after the estimator see the resolved number.
    """

    eps: float = 1e-3
    n_queries: int | None = None
    difference: str = "central"
    total_steps: int | None = None
    fresh_closure: FreshClosure | None = None


@dataclass
class Parts:
    """What a component contributes (any of the three)."""

    estimator: Estimator | None = None
    sampler: Sampler | None = None
    transforms: Sequence[Transform] = field(default_factory=tuple)


@dataclass(frozen=True)
class Component:
    """A part a method contributes.

    Attributes:
        name: the method name used in ``build_optimizer`` ("kerzoo", "pezo", "dizo", ...).
        build: ``build(setup: Setup, **options) -> Parts``.
        options: the option names ``build`` accepts.
        replaces: which of "estimator" and "sampler" it provides (two components may not replace the same one).
        summary: one line for ``--help`` and the README's method table.
    """

    name: str
    build: Callable[..., Parts]
    options: frozenset[str]
    replaces: frozenset[str] = frozenset()
    summary: str = ""


_COMPONENTS: dict[str, Component] = {}
BASE_METHOD = "mezo"


def register_component(component: Component) -> None:
    """Make ``component.name`` usable in ``build_optimizer`` (alone or joined with '+')."""
    unknown = set(component.replaces) - {"estimator", "sampler"}
    if unknown:
        raise ValueError(f"a component can replace the estimator or the sampler, not {sorted(unknown)}")
    if component.name in _COMPONENTS or component.name == BASE_METHOD or "+" in component.name:
        raise ValueError(f"cannot register a method named {component.name!r}")
    _COMPONENTS[component.name] = component


def available_methods() -> list[str]:
    return [BASE_METHOD, *sorted(_COMPONENTS)]


def component(name: str) -> Component:
    """The registered component of a method name."""
    if name not in _COMPONENTS:
        raise ValueError(f"unknown method {name!r}; available methods: {', '.join(available_methods())}")
    return _COMPONENTS[name]


def parse_method(method: str) -> list[Component]:
    """The components of a method name such as ``"kerzoo+pezo"`` (``mezo`` alone has none)."""
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
    if len({c.name for c in components}) != len(components):
        raise ValueError(f"method {method!r} names a component twice")
    for role in ("estimator", "sampler"):
        taken = [c.name for c in components if role in c.replaces]
        if len(taken) > 1:
            raise ValueError(f"methods {taken} both replace the {role}; combine at most one of them")
    return components


def split_options(components: Sequence[Component], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each component's own options, from nested (``kerzoo={...}``) and flat (``clip_norm=...``) ones."""
    by_key = {c.name: c for c in components} | {c.name.replace("-", "_"): c for c in components}
    own: dict[str, dict[str, Any]] = {c.name: {} for c in components}
    method = "+".join([BASE_METHOD, *(c.name for c in components)])
    for key, value in options.items():
        if key in by_key:
            target = by_key[key]
            if not isinstance(value, dict):
                raise ValueError(f"options of {target.name!r} must be a mapping of option = value, got {value!r}")
            unknown = sorted(set(value) - target.options)
            if unknown:
                raise ValueError(
                    f"unknown option(s) {unknown} for {target.name!r}; its options are {sorted(target.options)}"
                )
            own[target.name].update(value)
            continue
        owners = [c for c in components if key in c.options]
        if not owners:
            accepted = sorted({o for c in components for o in c.options})
            raise ValueError(f"unknown option(s) [{key!r}] for method {method!r}; its own options are {accepted}")
        if len(owners) > 1:
            names = [c.name for c in owners]
            raise ValueError(
                f"option {key!r} is taken by {names}: pass it nested, e.g. {owners[0].name.replace('-', '_')}={{{key!r}: ...}}"
            )
        own[owners[0].name][key] = value
    return own


def compose(
    params: Iterable[Any],
    components: Sequence[Component] = (),
    *,
    lr: float = 1e-6,
    eps: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    n_queries: int | None = None,
    difference: str = "central",
    sampler: str | Sampler = "gaussian",
    decay_mask: Callable[..., bool] = matrices_only,
    extra_transforms: Iterable[Transform] = (),
    record_trajectory: bool = False,
    total_steps: int | None = None,
    fresh_closure: FreshClosure | None = None,
    sync: LossSync | None = None,
    **options: Any,
) -> ZOOptimizer:
    """MeZO's parts with ``components`` swapped in; ``options`` go to the components (see the module
    docstring). ``n_queries=None`` takes the estimator's default (1, the authors' KerZOO 3)."""
    own = split_options(components, options)
    setup = Setup(eps=eps, n_queries=n_queries, difference=difference, total_steps=total_steps, fresh_closure=fresh_closure)
    built: dict[str, Parts] = {}
    estimator: Estimator | None = None
    for c in components:  # the estimator first: the other parts see its number of queries
        if "estimator" in c.replaces:
            parts = c.build(setup, **own[c.name])
            if parts.estimator is None:
                raise ValueError(f"method {c.name!r} says it replaces the estimator but built none")
            estimator = parts.estimator
            built[c.name] = parts
    if estimator is None:
        estimator = TwoPointEstimator(eps=eps, n_queries=1 if n_queries is None else n_queries, difference=difference)
    setup = Setup(eps, estimator.n_queries, difference, total_steps, fresh_closure)
    for c in components:
        if c.name not in built:
            built[c.name] = c.build(setup, **own[c.name])
    built_in_order = [built[c.name] for c in components]  # transforms keep the order the method names them
    for parts in built_in_order:
        if parts.sampler is not None:
            if sampler != "gaussian":
                raise ValueError("this method provides the sampler; do not also pass sampler=")
            sampler = parts.sampler
    contributed = [t for parts in built_in_order for t in parts.transforms] + list(extra_transforms)
    for transform in contributed:
        if transform.stage not in STAGES:
            raise ValueError(f"transform {transform!r} has stage {transform.stage!r}; expected one of {STAGES}")
    transforms: list[Transform] = [
        *(t for t in contributed if t.stage == "gradient"),
        LearningRate(),
        DecoupledWeightDecay(decay_mask),
        *(t for t in contributed if t.stage == "update"),
    ]
    return ZOOptimizer(
        params,
        lr=lr,
        estimator=estimator,
        sampler=sampler,
        transforms=transforms,
        weight_decay=weight_decay,
        seed=seed,
        record_trajectory=record_trajectory,
        sync=sync,
    )


def mezo(
    params: Iterable[Any],
    lr: float = 1e-6,
    eps: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    n_queries: int | None = None,
    **options: Any,
) -> ZOOptimizer:
    """MeZO (Malladi et al., 2023): in-place ZO-SGD with the two-point SPSA estimator.

    Per step, with z ~ N(0, I) regenerated from the seed and c = (L(theta + eps z) - L(theta - eps z)) / (2 eps):

        theta <- theta - lr * (c z + weight_decay * theta)

    averaged over ``n_queries`` directions (n-SPSA) when ``n_queries > 1``. Defaults follow the paper's
    full fine-tuning setting (eps = 1e-3, no weight decay, constant lr; its grid is lr in {1e-6, 1e-7} for
    OPT). Further options (see :func:`compose`): ``difference`` ("central" or "forward"), ``sampler``
    (default: zotune's counter-based "gaussian"; "gaussian-torch" draws with ``torch.Generator``),
    ``decay_mask`` (default: tensors with 2+ dimensions), ``extra_transforms``, ``record_trajectory``,
    ``sync`` (a :class:`zotune.LossSync`: data parallelism across ranks).
    """
    return compose(params, (), lr=lr, eps=eps, weight_decay=weight_decay, seed=seed, n_queries=n_queries, **options)


def build_optimizer(method: str, params: Iterable[Any], **options: Any) -> ZOOptimizer:
    """The optimizer of a method name, e.g. ``build_optimizer("kerzoo+pezo", model.parameters(), lr=1e-6)``."""
    return compose(params, parse_method(method), **options)
