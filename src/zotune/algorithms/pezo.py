"""PeZO as its authors run it (Tan et al., "Perturbation-efficient Zeroth-order Optimization for
Hardware-friendly On-device Training", arXiv 2504.20314, ICCAD 2025).

Source: the authors' perturbation code, left commented out in ``Skilteee/Divergence-driven-Zeroth-order``
at commit 210ad6a: ``large_models/trainer.py`` (classes ``RNG``/``RNGs``, lines 229-267; the perturbation,
lines 1330-1392), ``run.py`` (options ``bits``, ``rng``, ``pre_gen``, ``size``) and ``mezo.sh`` (BITS=12,
RNG=31). Notes in ``shared/papers/pezo.md``; the generator itself is :mod:`zotune.algorithms.pezo_rng`.

PeZO keeps MeZO's estimator and step (two forward passes, z regenerated for the update) and replaces the
Gaussian draw of z by hardware-style random numbers:

* **n RNGs of b-bit signed integers** (defaults n = 31, b = 12, as their scripts): RNG k walks a fixed
  random permutation of all 2^b values; the array of n steps in lockstep and is rotated (first to last)
  every 2^b - 1 calls.
* **On the fly** (default, their ``pre_gen=False``): one call of the array per tensor and step gives an
  n-vector v, scaled by E||N(0, I_n)|| / ||v|| (||v|| read from a norm table, a lookup instead of a square
  root) and **tiled** across the tensor: z[j] = s v[j mod n]. A step needs n random numbers per tensor
  instead of one per parameter.
* **Pre-generation** (``mode="pre-generation"``): a fixed pool read sequentially with wrap-around, the read
  position carried across tensors and steps. How the pool is made is not in their commit (see
  :mod:`zotune.algorithms.pezo_rng` for our reading).
* ``scale_decay(step, s)`` is an option, identity by default: their code calls it but it is not in the commit.

What follows from tiling (pezo.md): inside every tensor z[j] = z[j + n] at every step, so a tensor only
ever moves in an n-dimensional subspace (P-dimensional with the pool). That is the authors' method as
coded; zotune's own variant ``pezo-block`` (:mod:`zotune.algorithms.pezo_block`: a fresh pool per step read
in signed block rotations, E[z z^T] = I) removes the limit, and the benchmarks measure both.

z is a pure function of the seed and the tensor's place in the step (the optimizer's canonical order), so
the three-pass step, resume and replay hold, and no global RNG is touched (the authors' permutations come
from Python's ``random.shuffle``; ours from counter-based keys of the seed).

Example:
    >>> opt = zotune.pezo(model.named_parameters(), lr=1e-6, eps=1e-3)             # 31 RNGs of 12 bits
    >>> loss = opt.step(lambda: loss_fn(model(x), y))
    >>> opt.last_step_random_numbers          # 3 passes x 31 numbers per tensor
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from zotune.algorithms.pezo_rng import MODES, PeZORNGSampler
from zotune.core.optimizer import ZOOptimizer
from zotune.core.samplers import register_sampler
from zotune.methods import Component, Parts, Setup, compose, register_component

AUTHORS_RNGS = 31
AUTHORS_BITS = 12


def _build(setup: Setup, **options: Any) -> Parts:
    return Parts(sampler=PeZORNGSampler(n_queries=setup.n_queries or 1, **options))


PEZO = Component(
    "pezo",
    build=_build,
    options=frozenset({"n_rngs", "bits", "mode", "pool_size", "scale_decay"}),
    replaces=frozenset({"sampler"}),
    summary="the authors' PeZO: 31 permutation RNGs of 12 bits, one n-vector per tensor tiled across it, "
    "norm-table scaling (or a pre-generated pool)",
)
register_component(PEZO)
register_sampler("pezo", PeZORNGSampler)


def pezo(
    params: Iterable[Any],
    lr: float = 1e-6,
    eps: float = 1e-3,
    n_rngs: int = AUTHORS_RNGS,
    bits: int = AUTHORS_BITS,
    mode: str = "on-the-fly",
    pool_size: int | None = None,
    scale_decay: Callable[[int, float], float] | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
    n_queries: int | None = None,
    **options: Any,
) -> ZOOptimizer:
    """The authors' PeZO: MeZO's step with z from ``n_rngs`` hardware-style ``bits``-bit generators.

    ``mode``: ``"on-the-fly"`` (default; one scaled n-vector tiled across each tensor) or
    ``"pre-generation"`` (a pool of ``pool_size`` numbers, default n 2^b, read with wrap-around).
    ``scale_decay(step, s)`` rescales the adaptive scale (identity by default; not in the authors' commit).
    Other options go to :func:`zotune.methods.compose` (``difference``, ``record_trajectory``, ...).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return compose(
        params,
        [PEZO],
        lr=lr,
        eps=eps,
        weight_decay=weight_decay,
        seed=seed,
        n_queries=n_queries,
        pezo=dict(n_rngs=n_rngs, bits=bits, mode=mode, pool_size=pool_size, scale_decay=scale_decay),
        **options,
    )


__all__ = ["AUTHORS_BITS", "AUTHORS_RNGS", "PEZO", "PeZORNGSampler", "pezo"]
