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

import torch

__all__ = ["ROTATIONS", "PARITY", "threefry2x32", "threefry2x32_reference", "split_key", "gaussian_pair",
           "uniform_pair", "rademacher_pair"]

ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
PARITY = 0x1BD11BDA
_MASK32 = 0xFFFFFFFF


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


# The float constants of the transforms below are written as literals on purpose: torch.compile (dynamo)
# turns a module-level float into a graph input, a 0-d tensor built and guarded on every call (18 of them in
# the Gaussian kernel), which weighs on the hundreds of small calls of a pass. The values:
#   2 pi / 2^24 = 3.7450702829239286e-07,  ln 2 = 0.6931471805599453,  sqrt 2 = 1.4142135623730951,
#   2 sqrt 3 / 2^24 = 2.0647654623614278e-07,  sqrt 3 = 1.7320508075688772.
# sin x = x P(x^2) and cos x = Q(x^2) on [-pi/4, pi/4]: least-squares fits in float64 on 4001 Chebyshev nodes
# (max error 2.8e-9 and 5.6e-11). ln f = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + s^7/7 + s^9/9 + ...) with
# s = (f - 1) / (f + 1), |s| <= 0.172 for f in [sqrt 1/2, sqrt 2): the terms dropped are below 7e-10.


def _minus_two_log_uniform(w0: torch.Tensor) -> torch.Tensor:
    """-2 ln u for u = (top23(w0) + 1/2) / 2^23, without a library logarithm.

    v = top23 + 1/2 is exact in float32 (24 significant bits; with 24 bits of w0 the top values would round
    to 2^24 and give u = 1, z = 0). v = f 2^e with f in [sqrt 1/2, sqrt 2) (exponent and mantissa read from
    v's bits, f halved when above sqrt 2), so -2 ln u = 2 ((23 - e) ln 2 - ln f), with ln f from the atanh
    series. Near u = 1, e = 23 and the result is -2 ln f alone, accurate relative to its small size.
    Integer bit operations, one division and multiply-adds: all vectorise on every backend.
    """
    v = ((w0 >> 9) & 0x7FFFFF).to(torch.float32) + 0.5
    bits = v.view(torch.int32)
    exponent = (bits >> 23) - 127
    f = ((bits & 0x7FFFFF) | 0x3F800000).view(torch.float32)  # v's mantissa as a float in [1, 2)
    high = f > 1.4142135623730951  # sqrt 2
    f = torch.where(high, f * 0.5, f)
    exponent = exponent + high.to(torch.int32)
    s = (f - 1.0) / (f + 1.0)
    s2 = s * s
    log_f = 2.0 * s * (1.0 + s2 * (1.0 / 3.0 + s2 * (0.2 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0)))))
    return 2.0 * ((23 - exponent).to(torch.float32) * 0.6931471805599453 - log_f)


def _cos_sin_turn(w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of t = 2 pi top24(w1) / 2^24, with an exact integer quadrant reduction.

    a = top24(w1) = q 2^22 + r with q = round(a / 2^22) and r in [-2^21, 2^21), so t = q pi/2 + x with
    x = 2 pi r / 2^24 in [-pi/4, pi/4): cos t and sin t are +-cos x or +-sin x by q mod 4, and the two are
    short polynomials on that interval.
    """
    a = (w1 >> 8) & 0xFFFFFF
    rounded = (a + (1 << 21)) >> 22
    x = (a - (rounded << 22)).to(torch.float32) * 3.7450702829239286e-07  # 2 pi / 2^24
    quadrant = rounded & 3
    x2 = x * x
    sin_x = x * (1.0 + x2 * (-0.1666665467619051 + x2 * (0.008332165610287573 + x2 * -0.0001951593233680722)))
    cos_x = 1.0 + x2 * (-0.4999999971766387 + x2 * (0.041666622695629034 + x2 * (-0.0013886747786927695
                                                                                 + x2 * 2.438918279477724e-05)))
    odd = (quadrant & 1) == 1
    # quadrant 0: (cos x, sin x); 1: (-sin x, cos x); 2: (-cos x, -sin x); 3: (sin x, -cos x)
    cos_sign = 1.0 - ((quadrant + 1) & 2).to(torch.float32)
    sin_sign = 1.0 - (quadrant & 2).to(torch.float32)
    return torch.where(odd, sin_x, cos_x) * cos_sign, torch.where(odd, cos_x, sin_x) * sin_sign


def _correctly_rounded_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt of a float32 tensor, correctly rounded on every backend, so eager and compiled kernels agree.

    Compiled CPU code (inductor's C++) takes the IEEE square root instruction, which is correctly rounded. Eager ``torch.sqrt`` of float32 on CPU is not (one value in six rounded otherwise on
    AVX-512), so eagerly the root is taken in float64 and rounded to float32: 53 bits exceed 2 x 24 + 2, so
    that double rounding gives the correctly rounded float32 too. The float64 root inside the compiled kernel
    would cost 0.2 ns per element on AVX-512 (``benchmarks/rng/pass_breakdown.py``, ``gaussian-float32-sqrt``
    row), hence the two branches; MPS has no float64 and keeps float32.
    """
    if torch.compiler.is_compiling() or x.device.type == "mps":
        return torch.sqrt(x)
    return torch.sqrt(x.to(torch.float64)).to(torch.float32)


def gaussian_pair(w0: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both Box-Muller branches: u = (top23(w0) + 1/2) / 2^23 in (0, 1), t = 2 pi top24(w1) / 2^24,
    z0 = sqrt(-2 ln u) cos t, z1 = sqrt(-2 ln u) sin t: two independent standard normals (their tails are
    cut at |z| = sqrt(2 ln 2^24) = 5.77, probability 8e-9).

    ln, cos and sin are not the library's (Sleef's, on CPU): a bit-level logarithm and an exact quadrant
    reduction with short polynomials, within 1e-6 of the float64 values for every input, cut a Gaussian
    pass from 2.78 to 2.22 ns per element on AVX2 (benchmarks/rng). Only float32 adds, multiplies, one
    division and one sqrt remain, so every backend rounds them the same way up to fused multiply-adds.
    """
    radius = _correctly_rounded_sqrt(_minus_two_log_uniform(w0))
    cos_t, sin_t = _cos_sin_turn(w1)
    return radius * cos_t, radius * sin_t


def uniform_pair(w0: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two uniforms on [-sqrt 3, sqrt 3) (mean 0, variance 1 up to 2^-24) from the top 24 bits of each word."""
    # literals: 2 sqrt 3 / 2^24 and sqrt 3 (see above)
    return (_top24(w0) * 2.0647654623614278e-07 - 1.7320508075688772,
            _top24(w1) * 2.0647654623614278e-07 - 1.7320508075688772)


def rademacher_pair(w0: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two signs (+1 or -1, equally likely) from the top bit of each word."""
    return 1.0 - 2.0 * ((w0 >> 31) & 1).to(torch.float32), 1.0 - 2.0 * ((w1 >> 31) & 1).to(torch.float32)
