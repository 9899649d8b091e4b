"""Threefry-2x32: the published known-answer vectors, the tensor code against the scalar statement, and the
sampler's stream against its documented layout, on both backends."""

from __future__ import annotations

import math
import random

import pytest
import torch

from zotune.core.samplers import THREEFRY_BLOCK, Direction, ThreefrySampler, make_sampler
from zotune.core.threefry import split_key, threefry2x32, threefry2x32_reference

# Random123's tests/kat_vectors: rounds, counter words, key words -> output words
KAT = [
    (13, (0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x9D1C5EC6, 0x8BD50731)),
    (13, (0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0xFD36D048, 0x2D17272C)),
    (13, (0x243F6A88, 0x85A308D3), (0x13198A2E, 0x03707344), (0xBA3E4725, 0xF27D669E)),
    (20, (0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    (20, (0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    (20, (0x243F6A88, 0x85A308D3), (0x13198A2E, 0x03707344), (0xC4923A9C, 0x483DF7A0)),
]


def as_int32(words: list[int]) -> torch.Tensor:
    return torch.tensor([w - (1 << 32) if w >= (1 << 31) else w for w in words], dtype=torch.int32)


def tensor_threefry(counters: list[tuple[int, int]], key: tuple[int, int], rounds: int) -> list[tuple[int, int]]:
    c0, c1 = as_int32([c[0] for c in counters]), as_int32([c[1] for c in counters])
    k0, k1 = as_int32([key[0]])[0], as_int32([key[1]])[0]
    w0, w1 = threefry2x32(c0, c1, k0, k1, rounds)
    return [(a & 0xFFFFFFFF, b & 0xFFFFFFFF) for a, b in zip(w0.tolist(), w1.tolist(), strict=True)]


@pytest.mark.parametrize("rounds,counter,key,expected", KAT)
def test_published_known_answer_vectors(rounds, counter, key, expected) -> None:
    assert threefry2x32_reference(counter, key, rounds) == expected
    assert tensor_threefry([counter], key, rounds) == [expected]


def test_tensor_code_equals_the_scalar_statement_on_random_words() -> None:
    rng = random.Random(7)
    for _ in range(5):
        key = (rng.getrandbits(32), rng.getrandbits(32))
        counters = [(rng.getrandbits(32), rng.getrandbits(32)) for _ in range(200)]
        assert tensor_threefry(counters, key, 20) == [threefry2x32_reference(c, key, 20) for c in counters]


def reference_stream(kind: str, numel: int, direction: Direction, rounds: int = 20) -> torch.Tensor:
    """The documented layout, element by element, from the scalar generator and float64 transforms."""
    key = tuple(k & 0xFFFFFFFF for k in split_key(direction.key))

    def numbers(pair: int) -> tuple[float, float]:
        w0, w1 = threefry2x32_reference((pair & 0x7FFFFFFF, pair >> 31), key, rounds)
        t0, t1 = w0 >> 8, w1 >> 8
        if kind == "gaussian":
            radius = math.sqrt(-2.0 * math.log(((w0 >> 9) + 0.5) / 2**23))
            angle = 2 * math.pi * t1 / 2**24
            return radius * math.cos(angle), radius * math.sin(angle)
        if kind == "uniform":
            return tuple((t / 2**24 * 2 - 1) * math.sqrt(3) for t in (t0, t1))  # type: ignore[return-value]
        return 1.0 - 2.0 * (w0 >> 31), 1.0 - 2.0 * (w1 >> 31)

    out = [0.0] * numel
    even = numel - numel % 2
    for start in range(0, even, THREEFRY_BLOCK):
        half = min(THREEFRY_BLOCK, even - start) // 2
        for t in range(half):
            out[start + t], out[start + half + t] = numbers(start // 2 + t)
    if numel % 2:
        out[-1] = numbers((numel - 1) // 2)[0]
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "rademacher"])
@pytest.mark.parametrize("backend", ["eager", "compiled"])
@pytest.mark.parametrize("numel", [1, 2, 3, 4, 7, 1000, 1001])
def test_the_fast_kernel_follows_the_documented_stream(kind: str, backend: str, numel: int) -> None:
    direction = Direction(2024, 3, 1, 77)
    x = torch.zeros(numel)
    ThreefrySampler(kind, backend=backend).add_(x, direction, alpha=1.0)
    torch.testing.assert_close(x.double(), reference_stream(kind, numel, direction), rtol=0, atol=3e-6)


@pytest.mark.parametrize("kind", ["gaussian", "uniform", "rademacher"])
@pytest.mark.parametrize("backend", ["eager", "compiled"])
def test_the_13_round_variant_follows_the_documented_stream_with_13_rounds(kind: str, backend: str) -> None:
    direction = Direction(2024, 3, 1, 77)
    x = torch.zeros(1001)
    make_sampler(f"{kind}-13", backend=backend).add_(x, direction, alpha=1.0)
    torch.testing.assert_close(x.double(), reference_stream(kind, 1001, direction, rounds=13), rtol=0, atol=3e-6)
    # and it is another stream than the default's: the rounds are part of the numbers
    assert not torch.allclose(x.double(), reference_stream(kind, 1001, direction), atol=1e-3)


def test_rounds_other_than_20_and_13_are_refused() -> None:
    with pytest.raises(ValueError, match="rounds must be one of"):
        ThreefrySampler("gaussian", rounds=8)


def test_a_tensor_spanning_blocks_follows_the_stream_at_the_block_edges() -> None:
    direction = Direction(5, 0, 0, 1)
    numel = THREEFRY_BLOCK + 9
    z = make_sampler("uniform").sample(numel, direction)
    edges = torch.tensor([0, 1, THREEFRY_BLOCK // 2 - 1, THREEFRY_BLOCK // 2, THREEFRY_BLOCK - 1, THREEFRY_BLOCK,
                          THREEFRY_BLOCK + 3, THREEFRY_BLOCK + 4, numel - 1])
    # the reference for the elements at the edges only: the second block is 8 + 1 elements
    key = tuple(k & 0xFFFFFFFF for k in split_key(direction.key))

    def uniform(pair: int, word: int) -> float:
        w = threefry2x32_reference((pair, 0), key, 20)[word] >> 8
        return (w / 2**24 * 2 - 1) * math.sqrt(3)

    half = THREEFRY_BLOCK // 2
    expected = [uniform(0, 0), uniform(1, 0), uniform(half - 1, 0), uniform(0, 1), uniform(half - 1, 1),
                uniform(half, 0), uniform(half + 3, 0), uniform(half, 1), uniform(half + 4, 0)]
    torch.testing.assert_close(z[edges].double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=3e-6)


def test_both_box_muller_branches_are_independent_normals() -> None:
    z = make_sampler("gaussian").sample(400_000, Direction(1, 2, 3, 4)).double()
    first, second = z[:200_000], z[200_000:]  # cos and sin branch of the same draws
    assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1].item()) < 5 / math.sqrt(200_000)
    assert abs(torch.corrcoef(torch.stack([first**2, second**2]))[0, 1].item()) < 5 / math.sqrt(200_000)
    for half in (first, second):
        assert abs(half.mean().item()) < 5 / math.sqrt(200_000) and abs(half.var().item() - 1) < 0.02
        assert abs((half.abs() > 1.959964).double().mean().item() - 0.05) < 0.003  # the two-sided 5% tail


def test_the_gaussian_transform_is_within_1e6_of_float64_for_every_input() -> None:
    """The bit-level logarithm and the polynomial cos / sin, checked on all 2^23 radius inputs and all 2^24
    angle inputs against float64 (the stream's definition is the float64 formula; these are its float32
    evaluation)."""
    from zotune.core.threefry import _cos_sin_turn, _minus_two_log_uniform

    k = torch.arange(1 << 23, dtype=torch.int32)
    got = _minus_two_log_uniform(k << 9).double()
    exact = -2.0 * torch.log((k.double() + 0.5) / 2**23)
    assert ((got - exact).abs() / exact).max() < 5e-7  # relative: accurate near u = 1 too
    assert (got.sqrt() - exact.sqrt()).abs().max() < 1e-6
    a = torch.arange(1 << 24, dtype=torch.int32)
    cos_t, sin_t = _cos_sin_turn(a << 8)
    angle = 2.0 * math.pi * a.double() / 2**24
    assert (cos_t.double() - torch.cos(angle)).abs().max() < 3e-7
    assert (sin_t.double() - torch.sin(angle)).abs().max() < 3e-7
