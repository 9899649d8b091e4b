"""``pezo-block``: zotune's own variant of PeZO, a per-step pool read in signed block rotations.

This is **not** the authors' scheme (that is :mod:`zotune.algorithms.pezo`: n hardware-style b-bit
generators tiled across each tensor). It was built from the abstract alone before the authors' code was
known and stays as a named variant: unlike plain tiling it has E[z z^T] = I, so no direction is blind.

PeZO (Tan et al., "Perturbation-efficient Zeroth-order Optimization for Hardware-friendly On-device
Training", arXiv 2504.20314) keeps MeZO's estimator and changes only where the direction z comes from:
(1) *random-number reuse*, so a step needs far fewer random numbers than one per parameter, and (2) an
*adaptive scaling* that lets cheap uniform numbers stand in for Gaussian ones. The method section of the
paper could not be read (see ``shared/papers/pezo.md``), so the scheme below is **our reading of the
abstract, unverified against the paper**; every choice is an option and the defaults are marked.

The direction for one tensor (flattened, length m) in query q of step t:

    P      = pool of n numbers, drawn once per refresh r = t // K        (key: seed, r, q)
    P      <- P * sqrt(n) / ||P||_2        ("adaptive", default)   or   P ~ U[-sqrt 3, sqrt 3]  ("fixed")
    z[j]   = s_b * P[(j mod n + o_b) mod n],     b = j // n               ("block-rotate", default)

with one offset o_b in [0, n) and one sign s_b = +-1 per block of n consecutive elements, both from one
64-bit number of the key (seed, t, q, tensor, b). So every block of z is a signed cyclic rotation of the
pool: in memory it is one contiguous slice of a doubled pool [P, P], and a pass over a tensor is a handful
of slice-adds (``flat[block] += s_b * alpha * [P, P][o_b : o_b + len]``), as cheap as an in-place add,
with no per-element index and no parameter-sized scratch.

Why these choices ([inferred], see pezo.md section 4):

* **Unit covariance, no blind directions.** Within a block, z holds n *different* pool entries (mean-zero,
  uncorrelated); elements of different blocks carry independent signs. So ``E[z z^T] = I`` exactly, for
  any pool size: the two-point estimator stays unbiased on a quadratic (tested). The signs matter: without
  them every full block of z would sum to the same sum(P), so the differences between block sums could
  never change (a blind subspace, measured: a 20-dim quadratic stalls at 1% of its start with n = 8), and
  ``E[z_i z_j] = 1/n`` across blocks. One offset for the whole tensor (``index_map="rotate"``, pezo.md
  scheme B) is the cheapest-looking reading, but then z_j = z_{j+n} in *every* step: all updates stay in a
  fixed n-periodic subspace of each tensor and ``E[z_j z_{j+n}] = 1``. It is kept as an option (and
  measured in the tests), not as the default.
* **Adaptive scaling** (default): dividing by the pool's own RMS makes every full block of z have squared
  norm exactly n, the expected squared norm of an n-block of N(0, 1) numbers, with E[z_j^2] = 1 exactly by
  symmetry. No Box-Muller, no CLT: uniform bits, one sum of squares and one multiply per pool refresh.
  ``scaling="fixed"`` uses uniform numbers on [-sqrt 3, sqrt 3] (variance 1) as they are.
* ``index_map="hash"`` (pezo.md scheme D) maps element j to ``P[((a j + b) mod 2^64) >> (64 - log2 n)]``,
  a multiply-add-shift hash with fresh (a, b) per tensor and step: collisions are pairwise ~1/n without any
  block structure, but it needs a per-element gather (computed in chunks). Note: the ``(a j + b) mod n``
  map of pezo.md aliases exactly like a rotation when n is a power of two; the *high* bits do not.
* ``refresh_every=K`` reuses one pool for K steps (pezo.md scheme C); offsets still change every step.

**Counting.** A hardware PeZO keeps the pool in on-chip memory; this sampler keeps it too (n float32
numbers, doubled: 8n bytes per query and device) together with the current step's offsets, so the three
passes of a step draw the pool and the offsets once. ``numbers_drawn`` reports what the last regeneration
actually generated: n per pool refresh and query, plus one number per offset (block-rotate: ceil(m/n) per
tensor and query; rotate: 1; hash: 2), and 0 when everything came from the cache. The optimizer sums it per
step, so ``opt.last_step_random_numbers`` is the exact count (compare MeZO's 3 d per step: it regenerates
d Gaussians in each pass). After a restart the cache is empty, so the first step regenerates (and counts)
the current pool once more even in the middle of a refresh period.

Everything is a pure function of (seed, step, query, tensor): the cache only saves work, so the seed
trick, replay and resume hold, and z never depends on parameter order or on any global RNG.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from zotune.core.samplers import (
    Direction,
    Sampler,
    counter_bits,
    gaussian_from_bits,
    rademacher_from_bits,
    register_sampler,
    uniform_from_bits,
)
from zotune.core.optimizer import ZOOptimizer
from zotune.core.seeds import mix, splitmix64, to_signed64
from zotune.methods import Component, Parts, Setup, compose, register_component

INDEX_MAPS = ("block-rotate", "rotate", "hash")
SCALINGS = ("adaptive", "fixed")
DISTRIBUTIONS = ("uniform", "gaussian", "rademacher")
DEFAULT_POOL_SIZE = 1 << 16
_PIECE = 1 << 14  # elements per slice-add; below torch's intra-op grain size (32768), see add_

# Stream tags keep PeZO's pool and index-map keys apart from every other key in zotune ("PZPL", "PZMP").
_STREAM_POOL = 0x505A504C
_STREAM_MAP = 0x505A4D50

_FROM_BITS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "uniform": uniform_from_bits,  # U[-sqrt 3, sqrt 3): variance 1
    "gaussian": gaussian_from_bits,
    "rademacher": rademacher_from_bits,
}


def _logical_shift(x: torch.Tensor, bits: int) -> torch.Tensor:
    """x >> bits on int64 as unsigned (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _pieces(key: int, numel: int, device: torch.device, transform: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """``transform`` of ``numel`` counter-based 64-bit random numbers of the stream ``key``, in pieces.

    The pieces stay below torch's intra-op grain size: a pool is small, and on a busy CPU every OpenMP
    region of an eager op can wait a scheduler slice for its second thread (measured on the shared 2-core
    machine: ~0.3 s for one 2^16 pool in one piece, a few ms in pieces). The numbers do not depend on it.
    """
    key_t = torch.tensor(key, dtype=torch.int64, device=device)
    return [
        transform(counter_bits(torch.tensor(start, dtype=torch.int64, device=device), min(_PIECE, numel - start), key_t, device))
        for start in range(0, numel, _PIECE)
    ]


class PeZOBlockSampler(Sampler):
    """Directions assembled from a reused pool of uniform numbers (see the module docstring).

    Args:
        pool_size: n, the numbers per pool (a power of two, >= 2). Default 2^16 (unverified against the
            paper): on a ~100M-parameter model a step then draws < 0.1% of MeZO's random numbers.
        refresh_every: K, steps that share one pool (1: a fresh pool every step).
        index_map: ``"block-rotate"`` (default; one offset per block of n elements), ``"rotate"`` (one
            offset per tensor; aliases j and j + n), or ``"hash"`` (multiply-add-shift gather).
        scaling: ``"adaptive"`` (default; P * sqrt(n) / ||P||) or ``"fixed"`` (the distribution's own unit
            variance, i.e. U[-sqrt 3, sqrt 3] for uniform).
        distribution: what the pool is drawn from: ``"uniform"`` (default, PeZO), ``"gaussian"`` or
            ``"rademacher"`` (for ablations).
        chunk: elements per gather for ``index_map="hash"`` (bounds its scratch memory).
    """

    name = "pezo-block"

    def __init__(
        self,
        pool_size: int = DEFAULT_POOL_SIZE,
        refresh_every: int = 1,
        index_map: str = "block-rotate",
        scaling: str = "adaptive",
        distribution: str = "uniform",
        chunk: int = 1 << 18,
    ) -> None:
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 2 or pool_size & (pool_size - 1):
            raise ValueError(f"pool_size must be a power of two >= 2, got {pool_size!r}")
        if pool_size > 1 << 30:
            raise ValueError(f"pool_size must be at most 2^30, got {pool_size}")
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
            raise ValueError(f"refresh_every must be an integer >= 1, got {refresh_every!r}")
        if index_map not in INDEX_MAPS:
            raise ValueError(f"index_map must be one of {INDEX_MAPS}, got {index_map!r}")
        if scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.pool_size = pool_size
        self.log2_pool = pool_size.bit_length() - 1
        self.refresh_every = refresh_every
        self.index_map = index_map
        self.scaling = scaling
        self.distribution = distribution
        self.chunk = chunk
        # caches (pure functions of the keys, so dropping them never changes z)
        self._pools: dict[tuple[int, int, int, torch.device], torch.Tensor] = {}
        self._maps: dict[tuple[Direction, int], list[int]] = {}
        self._map_step: tuple[int, int] | None = None
        self._drawn = 0

    # --- the pure functions: pool and index map from the keys -------------------------------------------

    def pool_key(self, direction: Direction) -> int:
        """Key of the pool that ``direction`` reads: (seed, refresh, query); shared by every tensor."""
        return mix(direction.base_seed, _STREAM_POOL, direction.step // self.refresh_every, direction.query)

    def make_pool(self, direction: Direction, device: torch.device | str = "cpu") -> torch.Tensor:
        """The pool P (float32, length n) for ``direction``, scaled as configured."""
        pieces = _pieces(self.pool_key(direction), self.pool_size, torch.device(device), _FROM_BITS[self.distribution])
        if self.scaling == "adaptive":
            # P <- P * sqrt(n / sum_k P_k^2), the sum in float64; a pool of exact zeros (probability
            # ~2^-24n) is left at zero rather than divided by zero
            square_sum = sum(float(piece.double().square().sum()) for piece in pieces)
            scale = math.sqrt(self.pool_size / square_sum) if square_sum > 0 else 1.0
            pieces = [(piece.double() * scale).to(torch.float32) for piece in pieces]
        return torch.cat(pieces)

    def map_numbers(self, numel: int) -> int:
        """Random numbers the index map of one tensor of ``numel`` elements needs (per step and query)."""
        if numel == 0:
            return 0
        if self.index_map == "block-rotate":
            return -(-numel // self.pool_size)
        return 1 if self.index_map == "rotate" else 2

    def make_map(self, direction: Direction, numel: int) -> list[int]:
        """The index map's random numbers: (a, b) for the hash; for the rotations one entry per block,
        ``2 * o_b + (1 if s_b < 0 else 0)`` (offset o_b in [0, n) from the top bits of a 64-bit number, the
        sign from its lowest bit; ``rotate`` uses the first block's offset everywhere, with no sign)."""
        count = self.map_numbers(numel)
        key = mix(direction.key, _STREAM_MAP)
        if self.index_map == "hash":
            a = to_signed64(splitmix64(key + 1) | 1)  # odd multiplier
            b = to_signed64(splitmix64(key + 2))
            return [a, b]
        shift = 64 - self.log2_pool - 1  # the top log2(n) bits, then a zero bit for the sign below

        def offset_and_sign(bits: torch.Tensor) -> torch.Tensor:
            code = _logical_shift(bits, shift) & ~1
            return code | (bits & 1) if self.index_map == "block-rotate" else code

        pieces = _pieces(key, count, torch.device("cpu"), offset_and_sign)
        return [offset for piece in pieces for offset in piece.tolist()]

    def numbers_per_step(self, numels: Iterable[int], step: int, n_queries: int = 1) -> int:
        """What one uninterrupted step draws for tensors of ``numels``: pools (on refresh steps) + maps."""
        pools = self.pool_size if step % self.refresh_every == 0 else 0
        return n_queries * (pools + sum(self.map_numbers(m) for m in numels))

    # --- the cached path the optimizer uses -------------------------------------------------------------

    def _cached_pool(self, direction: Direction, device: torch.device) -> torch.Tensor:
        """The doubled pool [P, P] (so any rotation is one contiguous slice), cached per refresh."""
        refresh = direction.step // self.refresh_every
        key = (direction.base_seed, refresh, direction.query, device)
        pool = self._pools.get(key)
        if pool is None:
            # keep only the current refresh: a handful of queries x devices, O(n) memory
            for old in [k for k in self._pools if k[:2] != key[:2]]:
                del self._pools[old]
            single = self.make_pool(direction, device)
            pool = torch.cat([single, single]) if self.index_map != "hash" else single
            self._pools[key] = pool
            self._drawn += self.pool_size
        return pool

    def _cached_map(self, direction: Direction, numel: int) -> list[int]:
        step_key = (direction.base_seed, direction.step)
        if self._map_step != step_key:  # a new step: the old offsets are never read again
            self._maps.clear()
            self._map_step = step_key
        key = (direction, numel)
        index_map = self._maps.get(key)
        if index_map is None:
            index_map = self.make_map(direction, numel)
            self._maps[key] = index_map
            self._drawn += self.map_numbers(numel)
        return index_map

    def add_(self, flat: torch.Tensor, direction: Direction, alpha: float, decay: float = 1.0) -> None:
        numel = flat.numel()
        if decay != 1.0:
            flat.mul_(decay)
        if numel == 0:
            return
        pool = self._cached_pool(direction, flat.device)
        index_map = self._cached_map(direction, numel)
        if self.index_map == "hash":
            for start in range(0, numel, self.chunk):
                piece = flat[start : start + self.chunk]
                piece.add_(pool[self._hash_indices(index_map, start, piece.numel(), flat.device)], alpha=alpha)
            return
        n = self.pool_size
        codes = index_map if self.index_map == "block-rotate" else index_map * (-(-numel // n))
        # Block b of the tensor += alpha * [P, P][o_b : o_b + len_b]: one multi-tensor add over contiguous
        # slices, no index tensor, no scratch. The slices are cut into pieces below torch's intra-op grain
        # size, so each add runs serially inside the one C++ foreach loop: thousands of small OpenMP regions
        # are several times slower on a busy CPU (measured: 117 ms vs 21 ms per 28M elements), while one
        # thread already streams an in-place add at memory bandwidth.
        piece = min(n, _PIECE)
        targets = flat.split(piece)
        per_block = -(-n // piece)
        adds: tuple[tuple[list[torch.Tensor], list[torch.Tensor]], ...] = (([], []), ([], []))  # sign +, -
        for b, code in enumerate(codes):
            offset, negative = code >> 1, code & 1
            into_targets, into_sources = adds[negative]
            into_targets.extend(targets[b * per_block : (b + 1) * per_block])
            into_sources.extend(pool[offset : offset + min(n, numel - b * n)].split(piece))
        for (into_targets, into_sources), sign in zip(adds, (1.0, -1.0)):
            if into_targets:
                torch._foreach_add_(into_targets, into_sources, alpha=sign * alpha)

    def _hash_indices(self, ab: list[int], start: int, numel: int, device: torch.device) -> torch.Tensor:
        j = torch.arange(start, start + numel, dtype=torch.int64, device=device)
        return _logical_shift(j * ab[0] + ab[1], 64 - self.log2_pool)

    def numbers_drawn(self, numel: int) -> int:
        """Random numbers generated since the previous call: the optimizer calls this after every
        regeneration, so it is what that regeneration drew (the pool and offsets, or 0 from the cache)."""
        del numel
        drawn, self._drawn = self._drawn, 0
        return drawn

    # --- references -------------------------------------------------------------------------------------

    def sample(self, numel: int, direction: Direction, device: torch.device | str = "cpu") -> torch.Tensor:
        """z out of place from the pure functions (no cache, nothing counted): the reference for add_."""
        device = torch.device(device)
        pool = self.make_pool(direction, device)
        if numel == 0:
            return pool[:0].clone()
        index_map = self.make_map(direction, numel)
        j = torch.arange(numel, dtype=torch.int64, device=device)
        if self.index_map == "hash":
            return pool[self._hash_indices(index_map, 0, numel, device)]
        n = self.pool_size
        codes = torch.tensor(index_map, dtype=torch.int64, device=device)
        code = codes[j // n] if self.index_map == "block-rotate" else codes[0]
        sign = 1.0 - 2.0 * (code & 1).to(torch.float32)
        return sign * pool[(j % n + (code >> 1)) % n]

    # --- checkpoints ------------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return dict(
            pool_size=self.pool_size,
            refresh_every=self.refresh_every,
            index_map=self.index_map,
            scaling=self.scaling,
            distribution=self.distribution,
        )

    def state_dict(self) -> dict[str, Any]:
        # the sampler has no state beyond its configuration; it is stored so a resume with different
        # options (which would silently change every direction) is refused
        return {"config": self.config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("config")
        if saved is not None and saved != self.config():
            raise ValueError(f"checkpoint was made with PeZO options {saved}, this sampler has {self.config()}")
        self._pools.clear()
        self._maps.clear()
        self._map_step = None
        self._drawn = 0

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"PeZOBlockSampler({options})"


PEZO_OPTIONS = frozenset({"pool_size", "refresh_every", "index_map", "scaling", "distribution"})
def _build(setup: Setup, **options: Any) -> Parts:
    del setup
    return Parts(sampler=PeZOBlockSampler(**options))


PEZO_BLOCK = Component(
    "pezo-block",
    build=_build,
    options=PEZO_OPTIONS,
    replaces=frozenset({"sampler"}),
    summary="zotune's variant: a fresh uniform pool per step, read in signed block rotations (E[zz^T] = I)",
)
register_component(PEZO_BLOCK)
register_sampler("pezo-block", PeZOBlockSampler)


def pezo_block(
    params: Iterable[Any],
    lr: float = 1e-6,
    eps: float = 1e-3,
    pool_size: int = DEFAULT_POOL_SIZE,
    refresh_every: int = 1,
    index_map: str = "block-rotate",
    scaling: str = "adaptive",
    distribution: str = "uniform",
    weight_decay: float = 0.0,
    seed: int = 0,
    n_queries: int | None = None,
    **options: Any,
) -> ZOOptimizer:
    """``pezo-block`` (zotune's variant of PeZO): MeZO's two-point ZO-SGD with directions from a reused
    pool of uniform numbers.

    Per step, with z assembled from the pool (see :class:`PeZOBlockSampler`; E[z z^T] = I) and
    c = (L(theta + eps z) - L(theta - eps z)) / (2 eps):

        theta <- theta - lr * (c z + weight_decay * theta)

    drawing n / refresh_every + (offsets) random numbers per step instead of MeZO's d per pass. The
    defaults (n = 2^16, fresh pool every step, block rotations, adaptive RMS scaling of uniform numbers) are
    our reading of the paper's abstract, **unverified against the paper** (its method section could not be
    read). Other options go to :func:`zotune.methods.compose` (``difference``, ``decay_mask``, ...).

    Example:
        >>> opt = zotune.pezo_block(model.named_parameters(), lr=1e-6, eps=1e-3, pool_size=1 << 16)
        >>> loss = opt.step(lambda: loss_fn(model(x), y))
        >>> opt.last_step_random_numbers       # exact count of this step's random numbers

    Reference: Tan et al., arXiv 2504.20314 (ICCAD 2025).
    """
    return compose(
        params,
        [PEZO_BLOCK],
        lr=lr,
        eps=eps,
        weight_decay=weight_decay,
        seed=seed,
        n_queries=n_queries,
        pool_size=pool_size,
        refresh_every=refresh_every,
        index_map=index_map,
        scaling=scaling,
        distribution=distribution,
        **options,
    )


__all__ = ["PEZO_BLOCK", "PeZOBlockSampler", "pezo_block", "DEFAULT_POOL_SIZE", "INDEX_MAPS", "SCALINGS", "DISTRIBUTIONS"]
