"""Threefry-2x32: a counter-based generator whose inner loop is 32-bit adds, rotations and xors only.

Threefry (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the
Random123 library, also used by JAX) encrypts a counter under a key with a reduced Threefish block
cipher. For 2x32 words and R rounds (R = 20 here, Random123's default; 13 already passes BigCrush)::

    ks = (k0, k1, 0x1BD11BDA ^ k0 ^ k1)
    x0, x1 = c0 + k0, c1 + k1
    for r in 0 .. R-1:
        x0 += x1;  x1 = rotl32(x1, ROT[r mod 8]);  x1 ^= x0
        if r mod 4 == 3:                        # key injection s = (r + 1) / 4
            x0 += ks[s mod 3];  x1 += ks[(s + 1) mod 3] + s
    ROT = (13, 15, 26, 6, 17, 29, 16, 24)

all modulo 2^32. There is no multiplication and no 64-bit lane anywhere, so the loop vectorises with 8
lanes on AVX2, 16 on AVX-512 and 32-bit lanes on NEON and GPUs, unlike SplitMix64, whose 64-bit multiplies
AVX2 emulates. Tensors hold the 32-bit words as ``torch.int32`` (two's complement wraps like uint32 for
add, xor and left shift; right shifts are masked to be logical). The published known-answer vectors are
checked in ``tests/test_threefry.py`` against both this tensor code and :func:`threefry2x32_reference`.

One draw gives two 32-bit words, so two numbers per draw: both Box-Muller branches for Gaussians
(``r cos t``, ``r sin t``), two uniforms, two signs. See :class:`zotune.core.samplers.ThreefrySampler` for
how a tensor's elements map to counters.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ROTATIONS", "PARITY", "threefry2x32", "threefry2x32_reference", "split_key", "gaussian_pair",
           "uniform_pair", "rademacher_pair"]

ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
PARITY = 0x1BD11BDA
_MASK32 = 0xFFFFFFFF
_TWO_PI = 2.0 * math.pi
_SQRT3 = math.sqrt(3.0)


def _signed32(x: int) -> int:
    x &= _MASK32
    return x - (1 << 32) if x >= (1 << 31) else x


def split_key(key: int) -> tuple[int, int]:
    """A 64-bit key (any sign) as Threefry's two 32-bit key words, as signed int32 values."""
    key &= (1 << 64) - 1
    return _signed32(key), _signed32(key >> 32)


def threefry2x32_reference(counter: tuple[int, int], key: tuple[int, int], rounds: int = 20) -> tuple[int, int]:
    """The obvious scalar statement on Python ints (unsigned 32-bit words), for tests."""
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    ks = (k0, k1, PARITY ^ k0 ^ k1)
    x0, x1 = (counter[0] + k0) & _MASK32, (counter[1] + k1) & _MASK32
    for r in range(rounds):
        x0 = (x0 + x1) & _MASK32
        rot = ROTATIONS[r % 8]
        x1 = ((x1 << rot) | (x1 >> (32 - rot))) & _MASK32
        x1 ^= x0
        if r % 4 == 3:
            s = (r + 1) // 4
            x0 = (x0 + ks[s % 3]) & _MASK32
            x1 = (x1 + ks[(s + 1) % 3] + s) & _MASK32
    return x0, x1


def _rotl(x: torch.Tensor, rot: int) -> torch.Tensor:
    # >> on int32 is arithmetic: mask the sign-extended bits so the rotation is a rotation
    return (x << rot) | ((x >> (32 - rot)) & ((1 << rot) - 1))


def threefry2x32(c0: torch.Tensor, c1: torch.Tensor, k0: torch.Tensor, k1: torch.Tensor,
                 rounds: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Threefry-2x32-``rounds`` of int32 counter words ``(c0, c1)`` under int32 key words ``(k0, k1)``
    (0-d tensors or broadcastable); returns the two int32 output words. Elementwise torch ops only, so
    ``torch.compile`` fuses it with whatever consumes the words."""
    k2 = k0 ^ k1 ^ _signed32(PARITY)
    ks = (k0, k1, k2)
    x0 = c0 + k0
    x1 = c1 + k1
    for r in range(rounds):
        x0 = x0 + x1
        x1 = _rotl(x1, ROTATIONS[r % 8]) ^ x0
        if r % 4 == 3:
            s = (r + 1) // 4
            x0 = x0 + ks[s % 3]
            x1 = x1 + ks[(s + 1) % 3] + s
    return x0, x1


def _top24(word: torch.Tensor) -> torch.Tensor:
    """The top 24 bits of a 32-bit word as a float32 in [0, 2^24): exact (a float32 has 24 bits)."""
    return ((word >> 8) & 0xFFFFFF).to(torch.float32)


def gaussian_pair(w0: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both Box-Muller branches: u = (top24(w0) + 1/2) / 2^24 in (0, 1), t = 2 pi top24(w1) / 2^24,
    z0 = sqrt(-2 ln u) cos t, z1 = sqrt(-2 ln u) sin t: two independent standard normals (their tails are
    cut at |z| = sqrt(2 ln 2^25) = 5.89, probability 4e-9)."""
    u = (_top24(w0) + 0.5) * (1.0 / 16777216.0)
    angle = _top24(w1) * (_TWO_PI / 16777216.0)
    radius = torch.sqrt(-2.0 * torch.log(u))
    return radius * torch.cos(angle), radius * torch.sin(angle)


def uniform_pair(w0: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two uniforms on [-sqrt 3, sqrt 3) (mean 0, variance 1 up to 2^-24) from the top 24 bits of each word."""
    scale = 2.0 * _SQRT3 / 16777216.0
    return _top24(w0) * scale - _SQRT3, _top24(w1) * scale - _SQRT3


def rademacher_pair(w0: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two signs (+1 or -1, equally likely) from the top bit of each word."""
    return 1.0 - 2.0 * ((w0 >> 31) & 1).to(torch.float32), 1.0 - 2.0 * ((w1 >> 31) & 1).to(torch.float32)
