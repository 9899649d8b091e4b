"""PeZO's hardware random-number scheme, as the authors coded it: an array of n permutation RNGs.

Source: the PeZO authors' leftover code in ``Skilteee/Divergence-driven-Zeroth-order`` at commit
210ad6ae0f12b6bbc5d54a35a0f984a67a9f23c9, ``large_models/trainer.py`` (classes ``RNG``/``RNGs``, lines
229-267; the commented-out ``zo_perturb_parameters``, lines 1330-1392), ``run.py`` (options ``bits``,
``rng``, ``pre_gen``, ``size``) and ``mezo.sh`` (defaults BITS=12, RNG=31). This module is our own code,
written from a reading of theirs; see ``shared/papers/pezo.md``.

**The RNG array.** RNG k (k < n) walks a fixed random permutation perm_k of the 2^b signed integers
[-2^(b-1), 2^(b-1)) cyclically (period 2^b). One call of the array steps all n RNGs in lockstep and returns
their n values in list order; before call p (0-based) with p > 0 and p = 0 mod (2^b - 1) the list is
rotated (first to last). Closed form, with T = 2^b:

    r = p // (T - 1)                    rotations before call p
    v_p[s] = perm_{(s + r) mod n}[p mod T]      for slot s < n.

**Scaling.** z-block = s v_p with s = scale_decay(i, E||N(0, I_n)|| / ||v_p||), i the step and

    E||N(0, I_n)|| = sqrt(2) Gamma((n + 1) / 2) / Gamma(n / 2)     (computed with lgamma);

z = 0 when ||v_p|| = 0. ||v_p|| is not computed per call: it is looked up in a table built over one period
and keyed by the value of the *original* first RNG (``RNGs.get_norm``; in slot (-r) mod n after r
rotations, their ``reverse_idx``). Its value is perm_0[p mod T], unique within a period, so the lookup is
exact. ``scale_decay`` is *not* in their commit (only called there); it is an option here, identity by
default.

**On-the-fly mode** (``pre_gen=False``): one array call per trainable tensor, in order, per step; the
scaled n-vector is tiled over the tensor, z[j] = s v_p[j mod n]. Their running counter becomes the pure
position p = (step * Q + query) * count + index (Q queries per step), the same walk for a fixed trainable set.

**Pre-generation mode** (``pre_gen=True``): a fixed pool of P numbers is read sequentially with
wrap-around, the read position carried from tensor to tensor and step to step:

    z[j] = pool[(pos + j) mod P],   pos = ((step * Q + query) * total + offset) mod P.

The pool's creation is not in their commit. **Our reading**: the scaled n-vectors of the same array at
calls 0, 1, ..., ceil(P/n) - 1, concatenated and cut to P, with P = n * 2^b by default (their ``size``
option, 0.9 by default, probably sets P, in units we cannot recover).

Everything is a pure function of (base_seed, Direction): the permutations come from counter-based keys
``mix(base_seed, STREAM_AUX, tag, k)`` (rank order of 2^b SplitMix64 numbers), never from a global RNG. The
tables are cached per (seed, device) only to save work. z does not depend on ``param_id``: the array is
walked by position. A pass is a gather of n integers (or a pool slice), one scalar multiply and slice-adds
into the tensor (no parameter-sized scratch; half dtypes go through float32 chunks and are rounded once,
where their code rounds z to the parameter dtype first). The scale's norm lookup happens on the CPU copy
of the tables, so a pass never synchronises with an accelerator.

**Counting.** ``numbers_drawn``: n per tensor and regeneration on the fly, 0 from the pool;
``setup_numbers()``: the numbers drawn once before training (n * 2^b for the norm table's period walk, or
ceil(P/n) * n for the pool). **Caveat** (pezo.md): on the fly, z[j] = z[j + n] inside every tensor at every
step, so each tensor only ever moves in an n-dimensional subspace; in pre-generation, a P-periodic one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from zotune.core.devices import wide_float

from zotune.core.samplers import Direction, Sampler, counter_bits
from zotune.core.seeds import STREAM_AUX, mix

MODES = ("on-the-fly", "pre-generation")
_PEZO_RNG_TAG = 0x505A524E  # "PZRN": keeps the permutation keys apart from every other key in zotune
_HALF_CHUNK = 1 << 20  # elements per float32 scratch when updating half-precision tensors


# ---------------------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------------------


def expected_gaussian_norm(n: int) -> float:
    """E||x|| for x ~ N(0, I_n): sqrt(2) Gamma((n+1)/2) / Gamma(n/2), via lgamma (sqrt(2/pi) for n = 1)."""
    return math.exp(0.5 * math.log(2.0) + math.lgamma((n + 1) / 2) - math.lgamma(n / 2))


def rng_permutations(base_seed: int, n_rngs: int, bits: int) -> torch.Tensor:
    """The n permutations (int32, shape (n, 2^b)) of the integers [-2^(b-1), 2^(b-1)) for ``base_seed``.

    Row k is the rank order of 2^b SplitMix64 numbers of key ``mix(base_seed, STREAM_AUX, tag, k)``
    (a uniformly random permutation; ties, probability ~2^-40, are broken by index). Built on the CPU,
    so every device sees the same permutations.
    """
    period = 1 << bits
    zero = torch.tensor(0, dtype=torch.int64)
    rows = []
    for k in range(n_rngs):
        key = torch.tensor(mix(base_seed, STREAM_AUX, _PEZO_RNG_TAG, k), dtype=torch.int64)
        order = torch.argsort(counter_bits(zero, period, key, torch.device("cpu")), stable=True)
        rows.append(order - period // 2)
    return torch.stack(rows).to(torch.int32)


def rng_array_vector(perms: torch.Tensor, p: int | torch.Tensor) -> torch.Tensor:
    """The n-vector returned by call ``p`` (0-based) of the RNG array, by the closed form.

    ``v_p[s] = perms[(s + r) mod n, p mod T]`` with ``r = p // (T - 1)`` rotations and T = 2^b. ``p`` may be
    an int (result shape (n,)) or a 1-D int64 tensor of calls (result shape (len(p), n)).
    """
    n, period = perms.shape
    slots = torch.arange(n, device=perms.device)
    if isinstance(p, int):
        rotations = (p // (period - 1)) % n
        return perms[(slots + rotations) % n, p % period]
    p = p.to(device=perms.device, dtype=torch.int64)
    rows = (slots[None, :] + (p // (period - 1))[:, None]) % n
    return perms[rows, (p % period)[:, None]]


def norm_table(perms: torch.Tensor) -> torch.Tensor:
    """||v|| keyed by the original first RNG's value, built over one period as ``RNGs.get_norm`` does.

    ``table[perm_0[k] + 2^(b-1)] = sqrt(sum_j perm_j[k]^2)`` for k < 2^b (float64). Rotations only permute
    the slots, so this is ||v_p|| for every call p, looked up with the value of perm_0 at p mod 2^b.
    """
    period = perms.shape[1]
    wide = wide_float(perms.device)  # float64; float32 on MPS, which has no float64
    # math.sqrt of the exact integer sums: correctly rounded on every CPU. torch's vectorised float64 sqrt is
    # not (on an Ice Lake AVX-512 machine sqrt(19) came out one ulp low), and the table has only 2^b entries.
    sums = perms.to(torch.int64).square().sum(dim=0).tolist()
    norms = torch.tensor([math.sqrt(total) for total in sums], dtype=torch.float64).to(device=perms.device, dtype=wide)
    table = torch.empty(period, dtype=wide, device=perms.device)
    table[perms[0].to(torch.int64) + period // 2] = norms
    return table


def _scales(perms: torch.Tensor, table: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """E||N(0, I_n)|| / ||v_p|| (0 where ||v_p|| = 0) for the calls ``p``, from the authors' lookup."""
    period = perms.shape[1]
    norms = table[perms[0, p % period].to(torch.int64) + period // 2]
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return torch.where(norms > 0, expected_gaussian_norm(perms.shape[0]) / safe, torch.zeros_like(norms))


def pregeneration_pool(perms: torch.Tensor, size: int) -> torch.Tensor:
    """The pre-generation pool (float32, length ``size``): scaled vectors of calls 0, 1, ... (our reading)."""
    n = perms.shape[0]
    calls = torch.arange(-(-size // n), dtype=torch.int64, device=perms.device)
    vectors = rng_array_vector(perms, calls).to(torch.float32)
    scales = _scales(perms, norm_table(perms), calls).to(torch.float32)
    return (vectors * scales[:, None]).reshape(-1)[:size].contiguous()


def _tiled_add_(target: torch.Tensor, pattern: torch.Tensor, start: int) -> None:
    """``target[j] += pattern[(start + j) mod L]`` for all j: slice-adds and one broadcast add of a
    (rows, L) view, so no temporary of the target's size."""
    length, numel = pattern.numel(), target.numel()
    start %= length
    head = min(numel, length - start) if start else 0
    if head:
        target[:head].add_(pattern[start : start + head])
    body = (numel - head) // length * length
    if body:
        target[head : head + body].view(-1, length).add_(pattern)
    tail = numel - head - body
    if tail:
        target[head + body :].add_(pattern[:tail])


# ---------------------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------------------


class _Tables:
    """Per (seed, device) tables: permutations, their norm table (CPU) and, in pre-generation, the pool."""

    def __init__(self, perms_cpu: torch.Tensor, device: torch.device, pool_size: int | None) -> None:
        self.perms_cpu = perms_cpu
        self.table_cpu = norm_table(perms_cpu)
        self.perms = perms_cpu.to(device)
        self.pool = pregeneration_pool(perms_cpu, pool_size).to(device) if pool_size is not None else None


class PeZORNGSampler(Sampler):
    """PeZO's RNG-array directions, as in the authors' code (see the module docstring).

    Args:
        n_rngs: n, RNGs in the array (their ``rng``; 31 in ``mezo.sh``).
        bits: b, bits per number, 2..16 (12 in ``mezo.sh``); each RNG has period 2^b.
        mode: ``"on-the-fly"`` (their ``pre_gen=False``, default) or ``"pre-generation"``.
        pool_size: P, the pre-generation pool length (default n * 2^b, our reading); pre-generation only.
        scale_decay: ``f(step, s) -> s'`` applied to the adaptive scale (not in their commit; identity by
            default). Must be pure: a step regenerates z several times. On-the-fly mode only.
        n_queries: Q, queries per step, used to place each (step, query) on the array's walk.
    """

    name = "pezo-rng"

    def __init__(
        self,
        n_rngs: int = 31,
        bits: int = 12,
        mode: str = "on-the-fly",
        pool_size: int | None = None,
        scale_decay: Callable[[int, float], float] | None = None,
        n_queries: int = 1,
    ) -> None:
        if isinstance(n_rngs, bool) or not isinstance(n_rngs, int) or n_rngs < 1:
            raise ValueError(f"n_rngs must be an integer >= 1, got {n_rngs!r}")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
            raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if pool_size is not None and (isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1):
            raise ValueError(f"pool_size must be None or an integer >= 1, got {pool_size!r}")
        if pool_size is not None and mode != "pre-generation":
            raise ValueError("pool_size only applies to mode='pre-generation'")
        if scale_decay is not None and not callable(scale_decay):
            raise ValueError(f"scale_decay must be None or a callable (step, scale) -> scale, got {scale_decay!r}")
        if scale_decay is not None and mode != "on-the-fly":
            raise ValueError("scale_decay only applies to mode='on-the-fly' (the pool is scaled once)")
        if isinstance(n_queries, bool) or not isinstance(n_queries, int) or n_queries < 1:
            raise ValueError(f"n_queries must be an integer >= 1, got {n_queries!r}")
        self.n_rngs = n_rngs
        self.bits = bits
        self.period = 1 << bits
        self.mode = mode
        self.pool_size = (pool_size or n_rngs * self.period) if mode == "pre-generation" else None
        self.scale_decay = scale_decay
        self.n_queries = n_queries
        self.gaussian_norm = expected_gaussian_norm(n_rngs)
        self._tables: dict[tuple[int, torch.device], _Tables] = {}

    # --- tables and positions ----------------------------------------------------------------------------

    def tables(self, base_seed: int, device: torch.device | str = "cpu") -> _Tables:
        """The cached tables for ``base_seed`` on ``device`` (built on first use; other seeds are dropped)."""
        device = torch.device(device)
        key = (base_seed, device)
        if key not in self._tables:
            cpu = next((t.perms_cpu for (seed, _), t in self._tables.items() if seed == base_seed), None)
            self._tables = {k: t for k, t in self._tables.items() if k[0] == base_seed}
            perms = cpu if cpu is not None else rng_permutations(base_seed, self.n_rngs, self.bits)
            self._tables[key] = _Tables(perms, device, self.pool_size)
        return self._tables[key]

    def _call_index(self, direction: Direction) -> int:
        """p = (step * Q + query) * count + index: the array call that serves this tensor."""
        if not 0 <= direction.query < self.n_queries:
            raise ValueError(f"query {direction.query} is outside [0, n_queries={self.n_queries})")
        if not 0 <= direction.index < direction.count:
            raise ValueError(f"Direction.index {direction.index} is outside [0, count={direction.count})")
        return (direction.step * self.n_queries + direction.query) * direction.count + direction.index

    def _pool_position(self, numel: int, direction: Direction) -> int:
        """pos = ((step * Q + query) * total + offset) mod P: where this tensor starts reading the pool."""
        if not 0 <= direction.query < self.n_queries:
            raise ValueError(f"query {direction.query} is outside [0, n_queries={self.n_queries})")
        if direction.offset < 0 or direction.offset + numel > direction.total:
            raise ValueError(
                f"pre-generation needs Direction.offset/total: offset {direction.offset} + numel {numel} "
                f"exceeds total {direction.total}"
            )
        assert self.pool_size is not None
        walked = (direction.step * self.n_queries + direction.query) * direction.total
        return (walked + direction.offset) % self.pool_size

    def scale(self, direction: Direction) -> float:
        """s = scale_decay(step, E||N(0, I_n)|| / ||v_p||), or 0.0 when ||v_p|| = 0 (on-the-fly mode)."""
        return self._scale(self.tables(direction.base_seed), direction)

    def _scale(self, tables: _Tables, direction: Direction) -> float:
        # the authors' lookup: key = value of the original first RNG at this call, perm_0[p mod 2^b]
        p = self._call_index(direction)
        norm = float(tables.table_cpu[int(tables.perms_cpu[0, p % self.period]) + self.period // 2])
        if norm == 0.0:
            return 0.0
        s = self.gaussian_norm / norm
        return float(self.scale_decay(direction.step, s)) if self.scale_decay is not None else s

    def _pattern(self, numel: int, direction: Direction, device: torch.device) -> tuple[torch.Tensor, int]:
        """(float32 pattern, start): z[j] = pattern[(start + j) mod len(pattern)]."""
        tables = self.tables(direction.base_seed, device)
        if self.mode == "pre-generation":
            assert tables.pool is not None
            return tables.pool, self._pool_position(numel, direction)
        vector = rng_array_vector(tables.perms, self._call_index(direction)).to(torch.float32)
        return vector * self._scale(tables, direction), 0

    # --- Sampler interface -------------------------------------------------------------------------------

    def add_(self, flat: torch.Tensor, direction: Direction, alpha: float, decay: float = 1.0) -> None:
        """``flat <- decay * flat + alpha * z`` in place; z in float32, half dtypes rounded once (in chunks)."""
        numel = flat.numel()
        if numel == 0:
            return
        pattern, start = self._pattern(numel, direction, flat.device)
        if flat.dtype in (torch.float32, torch.float64):
            term = pattern.to(flat.dtype) * alpha  # pattern-sized (n or P), never parameter-sized
            if decay != 1.0:
                flat.mul_(decay)
            _tiled_add_(flat, term, start)
            return
        term = pattern * alpha
        for begin in range(0, numel, _HALF_CHUNK):
            piece = flat[begin : begin + _HALF_CHUNK]
            work = piece.to(torch.float32) * decay
            _tiled_add_(work, term, start + begin)
            piece.copy_(work)

    def sample(self, numel: int, direction: Direction, device: torch.device | str = "cpu") -> torch.Tensor:
        device = torch.device(device)
        out = torch.zeros(numel, dtype=torch.float32, device=device)
        if numel:
            pattern, start = self._pattern(numel, direction, device)
            _tiled_add_(out, pattern, start)
        return out

    def numbers_drawn(self, numel: int) -> int:
        """Per regeneration: one array call (n numbers) per tensor on the fly; 0 from the pool."""
        return self.n_rngs if self.mode == "on-the-fly" and numel > 0 else 0

    def setup_numbers(self) -> int:
        """Numbers drawn once before training: the norm table's period walk (n * 2^b, ``RNGs.get_norm``)
        on the fly; the pool's ceil(P/n) array calls (n each) in pre-generation."""
        if self.pool_size is None:
            return self.n_rngs * self.period
        return -(-self.pool_size // self.n_rngs) * self.n_rngs

    def config(self) -> dict[str, Any]:
        decay = self.scale_decay
        decay_name = None
        if decay is not None:
            decay_name = f"{decay.__module__}.{getattr(decay, '__qualname__', type(decay).__qualname__)}"
        return {
            "name": self.name,
            "n_rngs": self.n_rngs,
            "bits": self.bits,
            "mode": self.mode,
            "pool_size": self.pool_size,
            "scale_decay": decay_name,
            "n_queries": self.n_queries,
        }

    def state_dict(self) -> dict[str, Any]:
        return {}  # z is a pure function of (base_seed, Direction); the tables are caches

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"PeZORNGSampler({options})"
