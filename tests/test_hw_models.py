"""Reference models of the hardware generators (pure Python; no HDL needed)."""

from __future__ import annotations

import math
import random
import struct

import pytest
import torch

from zotune.algorithms.pezo_rng import PeZORNGSampler, expected_gaussian_norm, rng_array_vector, rng_permutations
from zotune.core.samplers import Direction
from zotune.hw import models


def _f32_words(t: torch.Tensor) -> list[int]:
    return [w & 0xFFFFFFFF for w in t.to(torch.float32).view(torch.int32).tolist()]


@pytest.mark.parametrize("width", [w for w in models.LFSR_TAPS if w <= 16])
def test_lfsr_taps_are_maximal(width: int) -> None:
    state, seen = 1, 0
    while True:
        state = models.lfsr_step(state, width)
        seen += 1
        if state == 1:
            break
        assert state != 0 and seen < 1 << width
    assert seen == (1 << width) - 1


@pytest.mark.parametrize("width", range(2, 13))
def test_debruijn_counter_walks_every_value_once(width: int) -> None:
    walk = models.debruijn_walk(width)
    assert sorted(walk) == list(range(-(1 << (width - 1)), 1 << (width - 1)))


def test_lfsr_leap_is_repeated_steps_and_seeds_nonzero() -> None:
    assert models.lfsr_leap(0xACE1, 32, 12) == models.lfsr_step(models.lfsr_leap(0xACE1, 32, 11), 32)
    seeds = models.lfsr_seeds(3, 50, 8)
    assert all(0 < s < 256 for s in seeds) and seeds == models.lfsr_seeds(3, 50, 8)
    with pytest.raises(ValueError):
        models.lfsr_step(1, 23)


def test_lfsr_permutations_fit_zotunes_closed_form() -> None:
    perms = models.lfsr_permutations(5, 7, 4)
    assert perms.shape == (7, 16) and perms.dtype == torch.int32
    for row in perms:
        assert sorted(row.tolist()) == list(range(-8, 8))
        # every RNG walks the same de Bruijn cycle from its own phase
        nxt = {int(a): int(b) for a, b in zip(row, torch.roll(row, -1))}
        assert nxt == {int(a): int(b) for a, b in zip(perms[0], torch.roll(perms[0], -1))}
    assert len({tuple(r.tolist()) for r in perms}) == 7
    assert rng_array_vector(perms, 20).shape == (7,)


def test_float_product_is_torchs_float32_multiply() -> None:
    rng = random.Random(0)
    for _ in range(3000):
        v = rng.randint(-(1 << 15), (1 << 15) - 1)
        s = rng.uniform(1e-5, 2.0)
        expected = _f32_words(torch.tensor([float(v)], dtype=torch.float32) * s)[0]
        assert models.float_product_bits(v, models.f32_bits(s)) == expected
    assert models.float_product_bits(0, models.f32_bits(0.3)) == 0
    assert models.float_product_bits(5, 0) == 0


@pytest.mark.parametrize("n, bits", [(31, 12), (5, 3), (8, 8)])
def test_float32_words_are_the_samplers(n: int, bits: int) -> None:
    """The model's float32 words are the IEEE bits of PeZORNGSampler.sample, rotations included."""
    seed = 11
    sampler = PeZORNGSampler(n_rngs=n, bits=bits)
    period = 1 << bits
    calls = [0, 1, period - 2, period - 1, period, 2 * period - 2, 2 * period - 1, 5 * period + 3]
    words = models.pezo_array_words(rng_permutations(seed, n, bits), calls, "float32")
    for p, row in zip(calls, words):
        assert row == _f32_words(sampler.sample(n, Direction(seed, p, 0, 0))), p


def test_fixed_words_approximate_the_sampler() -> None:
    n, bits, frac = 31, 12, 11
    perms = rng_permutations(0, n, bits)
    table, shift = models.fixed_scale_table(perms, frac, 17)
    assert max(table) < 1 << 17 and shift >= 1
    sampler = PeZORNGSampler(n_rngs=n, bits=bits)
    calls = list(range(0, 9000, 97))
    for p, row in zip(calls, models.pezo_array_words(perms, calls, "fixed", frac=frac)):
        z = sampler.sample(n, Direction(0, p, 0, 0))
        got = torch.tensor(models.words_to_values(row, frac, 16))
        # rounding of the scale (relative 2^-scale_bits..) and of the product (2^-frac / 2)
        assert (got - z).abs().max().item() <= 2.0**-frac * 0.5 + z.abs().max().item() * 2.0**-12


def test_fixed_product_rounds_and_saturates() -> None:
    assert models.fixed_product(3, 5, 2, 16) == (15 + 2) >> 2
    assert models.fixed_product(-3, 5, 2, 16) == (-15 + 2) >> 2
    assert models.fixed_product(1 << 14, 1 << 10, 1, 16) == (1 << 15) - 1
    assert models.fixed_product(-(1 << 14), 1 << 10, 1, 16) == -(1 << 15)


def test_scale_values_are_gaussian_norm_over_vector_norm() -> None:
    perms = rng_permutations(2, 6, 4)
    scales = models.scale_values(perms)
    for p in range(16):
        v = rng_array_vector(perms, p).double()
        key = int(perms[0, p]) + 8
        expected = expected_gaussian_norm(6) / v.norm().item() if v.norm() > 0 else 0.0
        assert scales[key] == pytest.approx(expected, rel=1e-15)


def test_icdf_table_is_a_discretised_unit_gaussian() -> None:
    frac = 11
    table = models.icdf_table(10, frac, 16)
    assert table == sorted(table) and table[0] > 0
    variance = sum(q * q for q in table) / len(table) / 4.0**frac  # symmetric: E[z^2] over the half table
    assert 0.97 < variance < 1.0  # the bins' midpoints lose a little of the tails
    with pytest.raises(ValueError):
        models.icdf_table(10, 14, 16)


def test_quantise_and_bits_roundtrip() -> None:
    words = models.quantise([0.5, -0.5, 100.0, -100.0], 11, 16)
    assert models.words_to_values(words, 11, 16) == [0.5, -0.5, (2**15 - 1) / 2**11, -(2**15) / 2**11]
    assert models.bits_f32(models.f32_bits(0.1)) == struct.unpack("<f", struct.pack("<f", 0.1))[0]
    assert models.to_signed(0xFF, 8) == -1 and models.to_signed(0x7F, 8) == 127


def test_rsqrt_table_tracks_the_norm() -> None:
    n, bits, frac, shift = 8, 12, 11, 12
    sumsq_bits = (n * (1 << (2 * bits - 2))).bit_length()
    table = models.rsqrt_table(10, sumsq_bits, n, frac, shift, 24)
    step = 2 ** (sumsq_bits - 10)
    i = 300
    assert table[i] / 2.0 ** (frac + shift) == pytest.approx(expected_gaussian_norm(n) / math.sqrt((i + 0.5) * step),
                                                             rel=1e-3)
