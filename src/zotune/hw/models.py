"""Bit-level reference models of the hardware random-number generators (pure Python and torch, no HDL).

Every design in :mod:`zotune.hw.designs` computes exactly what a function here computes, and the tests
compare them word for word. The PeZO models reuse :mod:`zotune.algorithms.pezo_rng` (``rng_array_vector``,
``norm_table``, ``expected_gaussian_norm``, ``pregeneration_pool``), so a hardware word that matches a model
word matches what ``zotune.pezo`` samples.

Number formats:

* **fixed** (``W``-bit two's complement, ``F`` fractional bits; 16 and 11 by default): the output of every
  design in the comparison table.
* **float32** (PeZO only): z = round32(float32(v) * float32(s)), the product ``PeZORNGSampler`` computes
  (a float32 tensor times a Python float is evaluated in float32 by torch), so the hardware's words are the
  IEEE-754 bits of ``sampler.sample(...)``.

LFSR taps are the maximal-length ones of Xilinx XAPP052 (P. Alfke, "Efficient Shift Registers, LFSR
Counters, and Long Pseudo-Random Sequence Generators", 1996, table 3), checked here by walking the period.
The de Bruijn extension (the all-zero state inserted after 0...01) is the standard trick that turns a b-bit
maximal LFSR into a walk over all 2^b values, i.e. a permutation walk of period 2^b as PeZO's RNGs are.
"""

from __future__ import annotations

import math
import struct
from statistics import NormalDist

import torch

from zotune.algorithms.pezo_rng import expected_gaussian_norm, norm_table, rng_array_vector
from zotune.core.seeds import mix

# Fibonacci LFSR taps (1-based bit positions, XAPP052 table 3), maximal length 2^L - 1.
LFSR_TAPS: dict[int, tuple[int, ...]] = {
    2: (2, 1), 3: (3, 2), 4: (4, 3), 5: (5, 3), 6: (6, 5), 7: (7, 6), 8: (8, 6, 5, 4), 9: (9, 5),
    10: (10, 7), 11: (11, 9), 12: (12, 6, 4, 1), 13: (13, 4, 3, 1), 14: (14, 5, 3, 1), 15: (15, 14),
    16: (16, 15, 13, 4), 17: (17, 14), 18: (18, 11), 19: (19, 6, 2, 1), 20: (20, 17), 24: (24, 23, 22, 17),
    32: (32, 22, 2, 1), 48: (48, 47, 21, 20), 64: (64, 63, 61, 60),
}
_HW_TAG = 0x5A484157  # "ZHAW": keeps hardware seed keys apart from zotune's sampling keys


def _check_width(width: int) -> None:
    if width not in LFSR_TAPS:
        raise ValueError(f"no LFSR taps for width {width}; available: {sorted(LFSR_TAPS)}")


def lfsr_step(state: int, width: int) -> int:
    """One step of the Fibonacci LFSR: shift left, new bit 0 = XOR of the tap bits (XAPP052 numbering)."""
    _check_width(width)
    feedback = 0
    for tap in LFSR_TAPS[width]:
        feedback ^= (state >> (tap - 1)) & 1
    return ((state << 1) | feedback) & ((1 << width) - 1)


def debruijn_step(state: int, width: int) -> int:
    """One step of the de Bruijn counter: the LFSR with the all-zero state inserted (period 2^width).

    new bit 0 = XOR(taps) XOR [bits width-2..0 are all zero]; from 0...01 (top bit set, rest 0) it
    goes to 0, and from 0 to 1.
    """
    _check_width(width)
    feedback = 0
    for tap in LFSR_TAPS[width]:
        feedback ^= (state >> (tap - 1)) & 1
    low = state & ((1 << (width - 1)) - 1)
    feedback ^= int(low == 0)
    return ((state << 1) | feedback) & ((1 << width) - 1)


def lfsr_leap(state: int, width: int, steps: int) -> int:
    """``steps`` LFSR steps at once (what an unrolled hardware LFSR does in one clock)."""
    for _ in range(steps):
        state = lfsr_step(state, width)
    return state


def to_signed(value: int, bits: int) -> int:
    """Two's complement reading of the low ``bits`` bits of ``value``."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def lfsr_seeds(seed: int, count: int, width: int, tag: int = 0) -> list[int]:
    """``count`` nonzero ``width``-bit LFSR start states, a pure function of (seed, tag, index)."""
    out = []
    for k in range(count):
        value = mix(seed, _HW_TAG, tag, k) & ((1 << width) - 1)
        out.append(value or 1)
    return out


# ---------------------------------------------------------------------------------------------------------
# PeZO: permutation sources, scale tables, outputs
# ---------------------------------------------------------------------------------------------------------


def debruijn_walk(width: int, start: int = 0) -> list[int]:
    """The 2^width states of the de Bruijn counter from ``start``, as signed ``width``-bit values."""
    period = 1 << width
    out, state = [], start
    for _ in range(period):
        out.append(to_signed(state, width))
        state = debruijn_step(state, width)
    if state != start:
        raise AssertionError("de Bruijn counter did not return to its start after 2^width steps")
    return out


def lfsr_start_states(seed: int, n_rngs: int, bits: int) -> list[int]:
    """Start states (unsigned b-bit) of PeZO's n de Bruijn RNGs: phases k * 2^b / n + jitter from the seed."""
    period = 1 << bits
    walk = [v & (period - 1) for v in debruijn_walk(bits)]
    jitter = lfsr_seeds(seed, 1, 32, tag=1)[0]
    return [walk[(k * period // n_rngs + jitter) % period] for k in range(n_rngs)]


def lfsr_permutations(seed: int, n_rngs: int, bits: int) -> torch.Tensor:
    """The (n, 2^b) permutations walked by the LFSR-source PeZO array (one de Bruijn counter per RNG, each
    started at its own phase): the same shape and meaning as ``pezo_rng.rng_permutations``, so zotune's
    closed form ``rng_array_vector`` and ``norm_table`` apply to them unchanged."""
    rows = [debruijn_walk(bits, start) for start in lfsr_start_states(seed, n_rngs, bits)]
    return torch.tensor(rows, dtype=torch.int32)


def f32_bits(value: float) -> int:
    """IEEE-754 binary32 bits of ``value`` (rounded to nearest)."""
    return struct.unpack("<I", struct.pack("<f", value))[0]


def bits_f32(bits: int) -> float:
    """The float whose binary32 bits are ``bits``."""
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def scale_values(perms: torch.Tensor) -> list[float]:
    """s = E||N(0, I_n)|| / ||v|| (0 for ||v|| = 0) for each key value k + 2^(b-1), k in [-2^(b-1), 2^(b-1)):
    the content of the norm table turned into a scale table (the division done once, offline)."""
    table = norm_table(perms).tolist()
    gaussian = expected_gaussian_norm(perms.shape[0])
    return [gaussian / norm if norm > 0 else 0.0 for norm in table]


def fixed_scale_table(perms: torch.Tensor, frac: int, scale_bits: int = 17) -> tuple[list[int], int]:
    """(table, shift): unsigned ``scale_bits``-bit words t = round(s * 2^(frac + shift)), with the largest
    ``shift`` that keeps every word below 2^scale_bits. The hardware computes z = (v t + 2^(shift-1)) >> shift."""
    scales = scale_values(perms)
    largest = max(scales)
    if largest <= 0:
        raise ValueError("every vector of the array is zero")
    shift = math.floor(math.log2((2**scale_bits - 1) / largest)) - frac
    while shift > 0 and round(largest * 2.0 ** (frac + shift)) >= 2**scale_bits:
        shift -= 1
    if shift < 1:
        raise ValueError(f"scale_bits={scale_bits} too small for this array (shift {shift})")
    return [round(s * 2.0 ** (frac + shift)) for s in scales], shift


def fixed_product(v: int, t: int, shift: int, width: int) -> int:
    """(v t + 2^(shift-1)) >> shift (floor), saturated to ``width``-bit two's complement."""
    z = (v * t + (1 << (shift - 1))) >> shift
    return max(-(1 << (width - 1)), min((1 << (width - 1)) - 1, z))


def float_product_bits(v: int, s_bits: int) -> int:
    """binary32 bits of round32(v * s) for an integer v (|v| < 2^24) and a positive normal float32 s: the
    int-by-float multiply the hardware does (exact 24 x b-bit product, round to nearest even)."""
    if v == 0 or s_bits & 0x7FFFFFFF == 0:
        return 0
    value = bits_f32(s_bits) * float(v)  # exact in float64 (24 + 16 bits), then rounded once below
    return f32_bits(value)


def pezo_array_words(perms: torch.Tensor, calls: range | list[int], fmt: str, frac: int = 11, width: int = 16,
                     scale_bits: int = 17) -> list[list[int]]:
    """Per call p: the n output words of PeZO's on-the-fly generator (``fmt`` = "fixed" or "float32"),
    z[s] = s_p * v_p[s] with v_p = ``rng_array_vector(perms, p)`` and s_p from the key perm_0[p mod 2^b]."""
    period = perms.shape[1]
    if fmt == "fixed":
        table, shift = fixed_scale_table(perms, frac, scale_bits)
    elif fmt == "float32":
        table = [f32_bits(s) for s in scale_values(perms)]
    else:
        raise ValueError(f"fmt must be 'fixed' or 'float32', got {fmt!r}")
    out = []
    for p in calls:
        v = rng_array_vector(perms, p).tolist()
        t = table[int(perms[0, p % period]) + period // 2]
        if fmt == "fixed":
            out.append([fixed_product(x, t, shift, width) & ((1 << width) - 1) for x in v])
        else:
            out.append([float_product_bits(x, t) for x in v])
    return out


def quantise(values: list[float], frac: int, width: int) -> list[int]:
    """round(x 2^frac) saturated to ``width``-bit two's complement, as unsigned words."""
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return [max(lo, min(hi, round(x * 2.0**frac))) & ((1 << width) - 1) for x in values]


# ---------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------


def icdf_table(index_bits: int, frac: int, width: int) -> list[int]:
    """Half-normal quantiles at bin midpoints: q[i] = round(Phi^-1(1/2 + (i + 1/2) / 2^(m+1)) 2^frac)."""
    half = NormalDist()
    size = 1 << index_bits
    words = [round(half.inv_cdf(0.5 + (i + 0.5) / (2 * size)) * 2.0**frac) for i in range(size)]
    if max(words) >= 1 << (width - 1):
        raise ValueError("width too small for the quantile table")
    return words


def rsqrt_table(index_bits: int, sumsq_bits: int, n: int, frac: int, shift: int, scale_bits: int) -> list[int]:
    """Scale table of the no-reuse uniform generator: entry i covers ||v||^2 in [i, i+1) * 2^(sumsq_bits -
    index_bits); t = round(E||N(0, I_n)|| / sqrt(bin midpoint) * 2^(frac + shift)), saturated."""
    step = 2 ** (sumsq_bits - index_bits)
    gaussian = expected_gaussian_norm(n)
    cap = 2**scale_bits - 1
    return [min(cap, round(gaussian / math.sqrt((i + 0.5) * step) * 2.0 ** (frac + shift)))
            for i in range(1 << index_bits)]


def words_to_values(words: list[int], frac: int, width: int) -> list[float]:
    """Fixed-point words (unsigned view) back to floats."""
    return [to_signed(w, width) / 2.0**frac for w in words]


__all__ = [
    "LFSR_TAPS", "bits_f32", "debruijn_step", "debruijn_walk", "f32_bits", "fixed_product", "fixed_scale_table",
    "float_product_bits", "icdf_table", "lfsr_leap", "lfsr_permutations", "lfsr_seeds", "lfsr_start_states",
    "lfsr_step", "pezo_array_words", "quantise", "rsqrt_table", "scale_values", "to_signed", "words_to_values",
]
