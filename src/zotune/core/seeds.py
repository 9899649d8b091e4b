"""Counter-based seeds: every random draw in zotune is a pure function of a few integers.

A ZO step needs the same direction ``z`` three or four times (probe +eps, probe -eps, update), and replay
or data parallelism need it again later, in another process or on another device. So ``z`` is never
*stored*; it is *recomputed* from a 64-bit key

    key = mix(base_seed, stream, step, query, parameter_id)

with :func:`mix`, a chain of SplitMix64 finalisers (Steele, Lea & Flood 2014). The key does not depend on
the order in which parameters are visited, on any global RNG state, or on what other code drew before:
the same integers always give the same key.

Keys are returned as Python ints in the signed 64-bit range, which is what ``torch.int64`` arithmetic and
``torch.Generator.manual_seed`` accept.
"""

from __future__ import annotations

import hashlib

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB

# Streams keep independent uses of randomness apart, so that e.g. KerZOO's per-query scalar or DiZO's
# search never share a key with the direction z of any parameter.
STREAM_DIRECTION = 0
STREAM_QUERY_SCALAR = 1
STREAM_AUX = 2
STREAM_TENSOR_SCALAR = 3


def splitmix64(x: int) -> int:
    """The SplitMix64 finaliser: a bijective avalanche mix of a 64-bit integer (unsigned result)."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * _MUL1) & MASK64
    x = ((x ^ (x >> 27)) * _MUL2) & MASK64
    return x ^ (x >> 31)


def to_signed64(x: int) -> int:
    """Reinterpret an unsigned 64-bit integer as signed two's complement (torch.int64's range)."""
    x &= MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


def mix(*parts: int) -> int:
    """Hash a tuple of integers into one signed 64-bit key.

    ``h_0 = splitmix64(len(parts))``, ``h_{i+1} = splitmix64(h_i + GOLDEN_GAMMA * (part_i + 1))``. Each
    part goes through a full avalanche, so keys for neighbouring counters are unrelated.
    """
    h = splitmix64(len(parts))
    for part in parts:
        h = splitmix64(h + GOLDEN_GAMMA * ((int(part) & MASK64) + 1))
    return to_signed64(h)


def name_id(name: str) -> int:
    """A stable 63-bit identity for a parameter name (independent of Python's per-process str hash)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def direction_key(base_seed: int, step: int, query: int, param_id: int) -> int:
    """Key of the direction z for one parameter, in one query of one step."""
    return mix(base_seed, STREAM_DIRECTION, step, query, param_id)


def query_scalar_key(base_seed: int, step: int, query: int) -> int:
    """Key of a per-query scalar shared by every tensor of that query (e.g. KerZOO's radius r)."""
    return mix(base_seed, STREAM_QUERY_SCALAR, step, query)


def tensor_scalar_key(base_seed: int, step: int, query: int, param_id: int) -> int:
    """Key of a per-tensor scalar of one query (e.g. the authors' KerZOO radius k, drawn per tensor)."""
    return mix(base_seed, STREAM_TENSOR_SCALAR, step, query, param_id)


def unit_uniform(key: int) -> float:
    """A float in [0, 1) from a key, with 53 random bits (for per-query scalars)."""
    return (splitmix64(key) >> 11) * (1.0 / (1 << 53))
