"""PeZO's RNG-array sampler against a literal emulation of the authors' classes.

The reference classes below follow ``RNG``/``RNGs`` and the commented-out ``zo_perturb_parameters`` of
Skilteee/Divergence-driven-Zeroth-order @ 210ad6ae0f12b6bbc5d54a35a0f984a67a9f23c9
(``large_models/trainer.py`` lines 229-267 and 1330-1392), step by step and slowly, with the permutations
injected instead of ``random.shuffle``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import torch

from zotune.algorithms import pezo_rng
from zotune.algorithms.pezo_rng import (
    PeZORNGSampler,
    expected_gaussian_norm,
    norm_table,
    pregeneration_pool,
    rng_array_vector,
    rng_permutations,
)
from zotune.core.samplers import Direction

SEED = 1234


# ---------------------------------------------------------------------------------------------------------
# Reference: the authors' classes, literally (random.shuffle replaced by an injected permutation)
# ---------------------------------------------------------------------------------------------------------


class ReferenceRNG:
    def __init__(self, permutation: list[int]) -> None:
        self.idx = 0
        self.random_numbers = list(permutation)

    def step(self) -> int:
        number = self.random_numbers[self.idx]
        self.idx = (self.idx + 1) % len(self.random_numbers)
        return number


class ReferenceRNGs:
    def __init__(self, bits: int, permutations: list[list[int]]) -> None:
        self.bits = bits
        self.num_RNGs = len(permutations)
        self.rngs = [ReferenceRNG(p) for p in permutations]
        self.idx = 0
        self.reverse_idx = 0
        self.get_norm()

    def get_norm(self) -> None:
        self.norm: dict[int, float] = {}
        for _ in range(2**self.bits):
            rns = [rng.step() for rng in self.rngs]
            self.norm[rns[0]] = sum([rn**2 for rn in rns]) ** 0.5
        self.idx = 0

    def step(self) -> list[int]:
        if self.idx % (2**self.bits - 1) == 0 and self.idx != 0:
            self.rngs.append(self.rngs.pop(0))
        self.idx += 1
        if (self.idx - 1) % (2**self.bits - 1) == 0 and self.idx != 1:
            self.reverse_idx = -((abs(self.reverse_idx) + 1) % self.num_RNGs)
        return [rng.step() for rng in self.rngs]


def reference_on_the_fly_z(
    rngs: ReferenceRNGs, numel: int, step: int, scale_decay: Callable[[int, float], float] | None = None
) -> torch.Tensor:
    """One tensor's z, as the on-the-fly branch of their zo_perturb_parameters builds it."""
    z = torch.tensor(rngs.step(), dtype=torch.float32)
    theoretical_norm = math.exp(0.5 * math.log(2) + math.lgamma((z.numel() + 1) / 2) - math.lgamma(z.numel() / 2))
    norm = rngs.norm[z[rngs.reverse_idx].item()]
    if norm != 0:
        s = theoretical_norm / norm
        z = (scale_decay(step, s) if scale_decay is not None else s) * z
    else:
        z = torch.zeros(z.shape, dtype=torch.float32)
    turn = math.ceil(numel / z.shape[0])
    return z.repeat(turn)[:numel]


def reference_pre_generation_z(pool: torch.Tensor, idx: int, numel: int) -> tuple[torch.Tensor, int]:
    """One tensor's z and the next read position, as the pre_gen branch reads its pool."""
    size = pool.shape[0]
    idx1 = idx + numel
    turn = math.ceil((idx1 + idx) / size)
    tmp = pool.repeat(turn)
    return tmp[idx:idx1], idx1 % size


def reference_array(seed: int, n: int, bits: int) -> tuple[torch.Tensor, ReferenceRNGs]:
    perms = rng_permutations(seed, n, bits)
    return perms, ReferenceRNGs(bits, perms.tolist())


def directions(sizes: list[int], step: int, query: int = 0) -> list[tuple[int, Direction]]:
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    return [
        (m, Direction(SEED, step, query, 100 + i, index=i, count=len(sizes), offset=offsets[i], total=sum(sizes)))
        for i, m in enumerate(sizes)
    ]


# ---------------------------------------------------------------------------------------------------------
# The RNG array: closed form, period, rotation, norms
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, bits", [(5, 3), (2, 2), (7, 4), (1, 3), (31, 2)])
def test_closed_form_matches_literal_emulation(n: int, bits: int) -> None:
    perms, reference = reference_array(SEED, n, bits)
    period = 2**bits
    calls = max(3 * period, (n + 1) * (period - 1)) + 1  # at least one full cycle of rotations
    table = norm_table(perms)
    vectors = []
    for p in range(calls):
        expected = reference.step()
        v = rng_array_vector(perms, p)
        assert v.tolist() == expected, p
        # reverse_idx points at the original first RNG, whose value is perm_0[p mod 2^b]
        assert expected[reference.reverse_idx] == perms[0, p % period].item()
        key = expected[reference.reverse_idx]
        assert table[key + period // 2].item() == reference.norm[key]
        vectors.append(v)
    assert torch.equal(rng_array_vector(perms, torch.arange(calls)), torch.stack(vectors))


def test_permutations_period_and_rotation() -> None:
    n, bits = 5, 3
    period = 2**bits
    perms, reference = reference_array(SEED, n, bits)
    assert perms.shape == (n, period) and perms.dtype == torch.int32
    for row in perms:  # each RNG holds every b-bit signed integer exactly once
        assert sorted(row.tolist()) == list(range(-period // 2, period // 2))
    assert len({tuple(row.tolist()) for row in perms}) == n
    assert torch.equal(perms, rng_permutations(SEED, n, bits))
    assert not torch.equal(perms, rng_permutations(SEED + 1, n, bits))

    originals = list(reference.rngs)
    streams: dict[int, list[int]] = {k: [] for k in range(n)}
    orders = []
    for p in range(4 * period):
        order = [originals.index(rng) for rng in reference.rngs]
        values = reference.step()
        order_after = [originals.index(rng) for rng in reference.rngs]
        rotated = order_after != order
        assert rotated == (p > 0 and p % (period - 1) == 0), p
        assert order_after == [(s + p // (period - 1)) % n for s in range(n)]
        for slot, k in enumerate(order_after):
            streams[k].append(values[slot])
        orders.append(order_after)
    for stream in streams.values():  # period exactly 2^b: a full period has no repeat, then it repeats
        assert len(set(stream[:period])) == period
        assert all(stream[i] == stream[i + period] for i in range(len(stream) - period))


def test_norm_table_is_the_direct_norm() -> None:
    for n, bits in [(5, 3), (31, 6), (1, 4)]:
        perms = rng_permutations(SEED, n, bits)
        table = norm_table(perms)
        period = 2**bits
        for p in range(2 * period + 3):
            v = rng_array_vector(perms, p).to(torch.int64)
            assert table[perms[0, p % period] + period // 2].item() == math.sqrt(int(v.square().sum()))


def test_expected_gaussian_norm() -> None:
    assert expected_gaussian_norm(1) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-14)
    assert expected_gaussian_norm(2) == pytest.approx(math.sqrt(math.pi / 2), rel=1e-14)
    generator = torch.Generator().manual_seed(0)
    for n in (3, 31):
        norms = torch.randn(200_000, n, generator=generator, dtype=torch.float64).norm(dim=1)
        assert abs(norms.mean().item() - expected_gaussian_norm(n)) < 5 * norms.std().item() / math.sqrt(200_000)


# ---------------------------------------------------------------------------------------------------------
# On-the-fly mode
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale_decay", [None, lambda i, s: s * 0.5**i])
def test_on_the_fly_matches_emulated_training_walk(scale_decay: Callable[[int, float], float] | None) -> None:
    n, bits = 5, 3
    perms, reference = reference_array(SEED, n, bits)
    sampler = PeZORNGSampler(n_rngs=n, bits=bits, scale_decay=scale_decay)
    sizes = [7, 3, 12, 1, 5]
    for step in range(6):  # 30 calls: rotations at 7, 14, 21, 28
        for m, direction in directions(sizes, step):
            expected = reference_on_the_fly_z(reference, m, step, scale_decay)
            assert torch.equal(sampler.sample(m, direction), expected), (step, direction.index)


def test_on_the_fly_tiling_and_scale() -> None:
    n, bits = 7, 4
    sampler = PeZORNGSampler(n_rngs=n, bits=bits)
    perms = rng_permutations(SEED, n, bits)
    direction = Direction(SEED, 3, 0, 9, index=2, count=4)
    p = 3 * 4 + 2
    z = sampler.sample(100, direction)
    assert torch.equal(z[:-n], z[n:])
    v = rng_array_vector(perms, p).to(torch.float32)
    s = expected_gaussian_norm(n) / v.double().norm().item()
    assert sampler.scale(direction) == pytest.approx(s, rel=1e-15)
    assert torch.equal(z[:n], v * sampler.scale(direction))
    assert z[:n].double().norm().item() == pytest.approx(expected_gaussian_norm(n), rel=1e-6)
    assert torch.equal(sampler.sample(3, direction), z[:3])  # tensors shorter than n take a prefix


def test_on_the_fly_position_uses_queries_and_index() -> None:
    n, bits = 5, 3
    two = PeZORNGSampler(n_rngs=n, bits=bits, n_queries=2)
    one = PeZORNGSampler(n_rngs=n, bits=bits)
    # p = (step * Q + query) * count + index = (1 * 2 + 1) * 3 + 2 = 11
    a = two.sample(9, Direction(SEED, 1, 1, 0, index=2, count=3))
    b = one.sample(9, Direction(SEED, 11, 0, 0))
    assert torch.equal(a, b)
    # param_id plays no part: the array is walked by position
    assert torch.equal(a, two.sample(9, Direction(SEED, 1, 1, 77, index=2, count=3)))


def test_zero_vector_gives_zero_direction() -> None:
    perms = rng_permutations(SEED, 1, 3)
    k = int((perms[0] == 0).nonzero()[0])
    sampler = PeZORNGSampler(n_rngs=1, bits=3)
    assert sampler.scale(Direction(SEED, k, 0, 0)) == 0.0
    assert torch.equal(sampler.sample(4, Direction(SEED, k, 0, 0)), torch.zeros(4))
    assert sampler.sample(4, Direction(SEED, k + 1, 0, 0)).abs().min().item() == pytest.approx(math.sqrt(2 / math.pi))


# ---------------------------------------------------------------------------------------------------------
# Pre-generation mode
# ---------------------------------------------------------------------------------------------------------


def test_pool_is_scaled_array_vectors() -> None:
    n, bits = 5, 3
    perms = rng_permutations(SEED, n, bits)
    sampler = PeZORNGSampler(n_rngs=n, bits=bits, mode="pre-generation")
    assert sampler.pool_size == n * 2**bits
    pool = sampler.tables(SEED).pool
    assert pool is not None and pool.shape == (n * 2**bits,)
    on_the_fly = PeZORNGSampler(n_rngs=n, bits=bits)
    expected = torch.cat([on_the_fly.sample(n, Direction(SEED, p, 0, 0)) for p in range(2**bits)])
    assert torch.equal(pool, expected)  # includes the rotation at call 2^b - 1
    assert torch.equal(pregeneration_pool(perms, 13), expected[:13])


def test_pre_generation_matches_emulated_reads_with_wrap_around() -> None:
    n, bits, size = 5, 3, 13
    sampler = PeZORNGSampler(n_rngs=n, bits=bits, mode="pre-generation", pool_size=size)
    pool = sampler.tables(SEED).pool
    assert pool is not None
    sizes = [7, 30, 3, 13]  # 30 > P: wraps inside one tensor
    idx = 0
    for step in range(4):  # the read position carries across tensors and steps
        for m, direction in directions(sizes, step):
            expected, idx = reference_pre_generation_z(pool, idx, m)
            z = sampler.sample(m, direction)
            assert torch.equal(z, expected), (step, direction.index)
            assert torch.equal(z, pool[(torch.arange(m) + direction.offset + step * sum(sizes)) % size])


def test_pre_generation_queries() -> None:
    sampler = PeZORNGSampler(n_rngs=3, bits=3, mode="pre-generation", pool_size=11, n_queries=2)
    pool = sampler.tables(SEED).pool
    assert pool is not None
    z = sampler.sample(4, Direction(SEED, 2, 1, 0, index=1, count=2, offset=5, total=9))
    assert torch.equal(z, pool[(torch.arange(4) + (2 * 2 + 1) * 9 + 5) % 11])


# ---------------------------------------------------------------------------------------------------------
# Sampler contract
# ---------------------------------------------------------------------------------------------------------


def _samplers() -> list[PeZORNGSampler]:
    return [PeZORNGSampler(n_rngs=5, bits=3), PeZORNGSampler(n_rngs=5, bits=3, mode="pre-generation", pool_size=17)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["on-the-fly", "pre-generation"])
def test_add_matches_sample_and_regenerates(dtype: torch.dtype, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pezo_rng, "_HALF_CHUNK", 7)  # exercise the chunked half-precision path
    sampler = _samplers()[mode == "pre-generation"]
    generator = torch.Generator().manual_seed(1)
    numel = 43
    direction = Direction(SEED, 2, 0, 5, index=1, count=3, offset=10, total=100)
    start = torch.randn(numel, generator=generator).to(dtype)
    z = sampler.sample(numel, direction)
    for alpha, decay in [(0.3, 1.0), (-1e-3, 0.999)]:
        flat = start.clone()
        sampler.add_(flat, direction, alpha, decay)
        if dtype in (torch.float32, torch.float64):
            expected = decay * start + alpha * z.to(dtype)
        else:
            expected = (start.to(torch.float32) * decay + alpha * z).to(dtype)
        assert torch.equal(flat, expected)
        again = start.clone()
        sampler.add_(again, direction, alpha, decay)
        assert torch.equal(again, flat)
    assert torch.equal(sampler.sample(numel, direction), z)
    sampler.add_(torch.empty(0, dtype=dtype), direction, 1.0)  # empty tensors are a no-op


def test_apply_on_shaped_parameters() -> None:
    for sampler in _samplers():
        direction = Direction(SEED, 0, 0, 0, offset=0, total=12)
        param = torch.zeros(3, 4)
        sampler.apply_(param, direction, 1.0)
        assert torch.equal(param.view(-1), sampler.sample(12, direction))
        transposed = torch.zeros(4, 3).t()
        sampler.apply_(transposed, direction, 1.0)
        assert torch.equal(transposed.contiguous().view(-1), sampler.sample(12, direction))


def test_global_rng_untouched() -> None:
    state = torch.get_rng_state()
    for sampler in _samplers():
        direction = Direction(SEED + 5, 1, 0, 0, offset=0, total=20)
        sampler.sample(20, direction)
        sampler.add_(torch.zeros(20), direction, 1.0)
    assert torch.equal(torch.get_rng_state(), state)


def test_numbers_drawn_and_setup() -> None:
    on_the_fly, pre_gen = _samplers()
    assert on_the_fly.numbers_drawn(1000) == 5 and on_the_fly.numbers_drawn(2) == 5 and on_the_fly.numbers_drawn(0) == 0
    assert on_the_fly.setup_numbers() == 5 * 8
    assert pre_gen.numbers_drawn(1000) == 0
    assert pre_gen.setup_numbers() == 20  # ceil(17 / 5) array calls of 5 numbers


def test_config_repr_state() -> None:
    def halve(step: int, scale: float) -> float:
        return scale / 2

    sampler = PeZORNGSampler(n_rngs=4, bits=5, scale_decay=halve, n_queries=2)
    config = sampler.config()
    assert json.loads(json.dumps(config)) == config
    assert config == {
        "name": "pezo-rng",
        "n_rngs": 4,
        "bits": 5,
        "mode": "on-the-fly",
        "pool_size": None,
        "scale_decay": f"{__name__}.test_config_repr_state.<locals>.halve",
        "n_queries": 2,
    }
    assert PeZORNGSampler(mode="pre-generation").config()["pool_size"] == 31 * 4096
    assert PeZORNGSampler(mode="pre-generation").config()["scale_decay"] is None
    assert "n_rngs=4" in repr(sampler) and "bits=5" in repr(sampler)
    assert sampler.state_dict() == {}
    sampler.load_state_dict({})
    undecayed = PeZORNGSampler(n_rngs=4, bits=5, n_queries=2)
    assert sampler.scale(Direction(SEED, 1, 0, 0)) == undecayed.scale(Direction(SEED, 1, 0, 0)) / 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_rngs": 0},
        {"n_rngs": 2.5},
        {"bits": 1},
        {"bits": 17},
        {"mode": "pregen"},
        {"mode": "pre-generation", "pool_size": 0},
        {"pool_size": 10},
        {"scale_decay": 3},
        {"mode": "pre-generation", "scale_decay": lambda i, s: s},
        {"n_queries": 0},
    ],
)
def test_invalid_options(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        PeZORNGSampler(**kwargs)


def test_invalid_directions() -> None:
    on_the_fly, pre_gen = _samplers()
    with pytest.raises(ValueError, match="n_queries"):
        on_the_fly.sample(4, Direction(SEED, 0, 1, 0))
    with pytest.raises(ValueError, match="index"):
        on_the_fly.sample(4, Direction(SEED, 0, 0, 0, index=3, count=3))
    with pytest.raises(ValueError, match="total"):
        pre_gen.sample(4, Direction(SEED, 0, 0, 0))


# ---------------------------------------------------------------------------------------------------------
# Known answers: an accidental change to the stream fails here
# ---------------------------------------------------------------------------------------------------------

KNOWN_DIRECTION = Direction(base_seed=42, step=7, query=1, param_id=3, index=2, count=5, offset=1000, total=5000)
KNOWN_ON_THE_FLY = [  # call p = (7 * 2 + 1) * 5 + 2 = 77
    1.0910307168960571, 1.2289552688598633, -0.8789123296737671, 0.7381341457366943,
    1.492438793182373, 0.9445453882217407, 1.1462005376815796, 0.04090176522731781,
]
KNOWN_PRE_GENERATION = [  # pool position ((7 * 2 + 1) * 5000 + 1000) mod (31 * 4096) = 76000
    -0.8883064985275269, -0.450408935546875, 1.4879580736160278, 0.2546955347061157,
    -0.8766887784004211, -0.8927748203277588, 1.8025293350219727, 0.5567554831504822,
]


def test_known_answers() -> None:
    on_the_fly = PeZORNGSampler(n_rngs=31, bits=12, n_queries=2)
    pre_gen = PeZORNGSampler(n_rngs=31, bits=12, mode="pre-generation", n_queries=2)
    assert on_the_fly.sample(8, KNOWN_DIRECTION).tolist() == KNOWN_ON_THE_FLY
    assert pre_gen.sample(8, KNOWN_DIRECTION).tolist() == KNOWN_PRE_GENERATION
