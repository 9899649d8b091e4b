"""Samplers: where perturbation directions z come from.

A sampler never stores z. It regenerates z for one parameter from a :class:`Direction` (base seed, step,
query, parameter id) and applies it in place:

    flat <- decay * flat + alpha * z(direction)                                   (``Sampler.add_``)

Every ZO pass (probe +eps, probe -eps, fused restore + update) is one such call per parameter, so the cost
of a pass is the cost of drawing z. Two families are provided:

* **Counter-based samplers** (``gaussian``, ``uniform``, ``rademacher``; the default family). Element i of
  z is a pure function of ``(key, i)``: Threefry-2x32-20 of a pair index under the key gives two 32-bit words
  (:class:`ThreefrySampler`, :mod:`zotune.core.threefry`), turned into two Gaussians (both Box-Muller
  branches, from integer and float arithmetic only), two uniforms on [-sqrt(3), sqrt(3)] (unit variance) or
  two signs. ``gaussian-13`` etc. are the named variant through Threefry-2x32-13 (other numbers, a third
  fewer rounds). The SplitMix64 streams used before (``*-splitmix``, :class:`CounterSampler`: 64 bits per
  element from ``splitmix64(key + GOLDEN_GAMMA * (i + 1))``) stay available. There is no generator state, so
  the generate-and-add is a single elementwise expression that ``torch.compile`` fuses into one
  multi-threaded, vectorised loop (C++/OpenMP on CPU, Triton on GPU), with no scratch memory. On the CPU the
  Threefry kernels give the same bits eagerly and compiled, so backend ``auto`` draws its first 2^26 numbers
  eagerly (a small trainable set never pays the compile) and a machine without a compiler gets the same run.
  The SplitMix64 streams' transcendental functions may differ in the last ulp between the backends.
  Faster still on the CPU, and the default there where it builds: the native C kernel of the Threefry stream
  (:mod:`zotune.core.native`, the same bits again, 2-3x faster per pass than the compiled one on AVX2).
* **Generator samplers** (``gaussian-torch``): ``torch.Generator`` on the parameter's device, reseeded for
  every chunk of ``CHUNK`` elements with ``mix(key, chunk)``; this is MeZO's ``torch.normal`` draw made
  order-independent and free of the global RNG. Portable to any device torch supports, but bounded by
  the generator's single-threaded speed.

Each sampler reports how many random numbers one regeneration of a tensor draws (``numbers_drawn``), so
methods that reuse random numbers (PeZO) can be compared exactly.
"""

from __future__ import annotations

import math
import struct
import sys
import threading
import types
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from zotune.core import native
from zotune.core.seeds import GOLDEN_GAMMA, direction_key, mix, to_signed64
from zotune.core.threefry import gaussian_pair, rademacher_pair, split_key, threefry2x32, uniform_pair


class Direction(NamedTuple):
    """Everything that identifies one parameter's direction z within a run.

    ``key`` depends only on (base_seed, step, query, param_id), so most samplers ignore the rest. The
    tensor's place in the step (``index`` of ``count`` trainable tensors, in the optimizer's canonical
    order: ascending ``param_id``; its first element at ``offset`` of ``total`` trainable elements) is for
    samplers whose stream runs *across* tensors, as PeZO's hardware RNG array does.
    """

    base_seed: int
    step: int
    query: int
    param_id: int
    index: int = 0
    count: int = 1
    offset: int = 0
    total: int = 0

    @property
    def key(self) -> int:
        return direction_key(self.base_seed, self.step, self.query, self.param_id)


class PlannedCall(NamedTuple):
    """One ``add_`` call a pass is about to make (see :meth:`Sampler.prepare`)."""

    numel: int
    device: torch.device
    direction: Direction
    alpha: float
    decay: float


class Sampler(ABC):
    """Regenerates unit-variance directions z and applies them in place."""

    name: str = "sampler"

    def prepare(self, calls: list[PlannedCall]) -> None:
        """Calls of ``add_`` the optimizer is about to make (a pass over the model). A sampler may move their
        scalars to the device in one copy; each announced call is then recognised by its arguments, in any
        order, and an unannounced one works as always. Default: nothing to do."""

    def release(self) -> None:
        """Forget what :meth:`prepare` announced and was not used (the optimizer calls it after a step)."""

    @abstractmethod
    def add_(self, flat: torch.Tensor, direction: Direction, alpha: float, decay: float = 1.0) -> None:
        """``flat <- decay * flat + alpha * z(direction)`` in place; ``flat`` is 1-D and contiguous."""

    @abstractmethod
    def sample(self, numel: int, direction: Direction, device: torch.device | str = "cpu") -> torch.Tensor:
        """z(direction) as a new float32 tensor of ``numel`` elements (for references and tests)."""

    def numbers_drawn(self, numel: int) -> int:
        """Random numbers generated by one regeneration of z for a tensor of ``numel`` elements."""
        return numel

    def apply_(self, param: torch.Tensor, direction: Direction, alpha: float, decay: float = 1.0) -> None:
        """``param <- decay * param + alpha * z`` for a parameter of any shape and layout."""
        data = param.detach()
        if data.is_contiguous():
            self.add_(data.view(-1), direction, alpha, decay)
        else:  # rare (e.g. a transposed view): work on a contiguous copy, then write it back
            flat = data.contiguous().view(-1)
            self.add_(flat, direction, alpha, decay)
            data.copy_(flat.view_as(data))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ---------------------------------------------------------------------------------------------------------
# Counter-based samplers
# ---------------------------------------------------------------------------------------------------------

_GAMMA_S = to_signed64(GOLDEN_GAMMA)
_MUL1_S = to_signed64(0xBF58476D1CE4E5B9)
_MUL2_S = to_signed64(0x94D049BB133111EB)
_TWO_PI = 2.0 * math.pi
_SQRT3 = math.sqrt(3.0)


def _shift_right_logical(x: torch.Tensor, bits: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic; masking off the sign-extended bits makes it logical
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def counter_bits(start: torch.Tensor, numel: int, key: torch.Tensor, device: torch.device) -> torch.Tensor:
    """64 random bits (as int64) for elements ``start .. start + numel - 1`` of the stream ``key``.

    ``h_i = splitmix64(key + GOLDEN_GAMMA * (i + 1))``: the SplitMix64 generator evaluated at counter i.
    int64 multiplication wraps modulo 2^64, which is the arithmetic SplitMix64 is defined in.
    """
    i = torch.arange(numel, dtype=torch.int64, device=device) + (start + 1)
    x = i * _GAMMA_S + key
    x = (x ^ _shift_right_logical(x, 30)) * _MUL1_S
    x = (x ^ _shift_right_logical(x, 27)) * _MUL2_S
    return x ^ _shift_right_logical(x, 31)


def gaussian_from_bits(h: torch.Tensor) -> torch.Tensor:
    """Box-Muller (cosine branch): u1 from the low 32 bits, in (0, 1]; the angle from the top 24 bits."""
    u1 = ((h & 0xFFFFFFFF).to(torch.float32) + 1.0) * (1.0 / 4294967296.0)
    angle = _shift_right_logical(h, 40).to(torch.float32) * (_TWO_PI / 16777216.0)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(angle)


def uniform_from_bits(h: torch.Tensor) -> torch.Tensor:
    """Uniform on [-sqrt(3), sqrt(3)) from the top 24 bits: mean 0, variance 1 (up to 2^-24)."""
    u = _shift_right_logical(h, 40).to(torch.float32) * (1.0 / 16777216.0)
    return (2.0 * u - 1.0) * _SQRT3


def rademacher_from_bits(h: torch.Tensor) -> torch.Tensor:
    """+1 or -1 with equal probability, from the top bit."""
    return 1.0 - 2.0 * _shift_right_logical(h, 63).to(torch.float32)


def _counter_update(
    flat: torch.Tensor,
    key: torch.Tensor,
    start: torch.Tensor,
    alpha: torch.Tensor,
    decay: torch.Tensor,
    transform: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    z = transform(counter_bits(start, flat.shape[0], key, flat.device))
    if flat.dtype == torch.float32:
        # in-place ops: inductor writes straight into the parameter (a copy_ of an expression that reads
        # the parameter measured 2x slower: it goes through a temporary)
        flat.mul_(decay).add_(z * alpha)
    elif flat.dtype == torch.float64:
        flat.mul_(decay).add_(z.double() * alpha)
    else:  # half precision: compute in float32 and round to the parameter dtype once
        flat.copy_((flat.to(torch.float32) * decay + z * alpha).to(flat.dtype))


def _gaussian_update(flat, key, start, alpha, decay):  # type: ignore[no-untyped-def]
    _counter_update(flat, key, start, alpha, decay, gaussian_from_bits)


def _uniform_update(flat, key, start, alpha, decay):  # type: ignore[no-untyped-def]
    _counter_update(flat, key, start, alpha, decay, uniform_from_bits)


def _rademacher_update(flat, key, start, alpha, decay):  # type: ignore[no-untyped-def]
    _counter_update(flat, key, start, alpha, decay, rademacher_from_bits)


_EAGER_KERNELS: dict[str, Callable[..., None]] = {
    "gaussian": _gaussian_update,
    "uniform": _uniform_update,
    "rademacher": _rademacher_update,
}
_TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gaussian": gaussian_from_bits,
    "uniform": uniform_from_bits,
    "rademacher": rademacher_from_bits,
}
_KernelKey = tuple[str, torch.dtype, str]  # (kind, parameter dtype, device type)
_compiled_kernels: dict[_KernelKey, Callable[..., None]] = {}
_compile_failed: set[str] = set()
_traced_kernels: set[Callable[..., None]] = set()  # compiled kernels already traced (see ThreefrySampler._trace)
_compile_lock = threading.Lock()
# sizes at which CounterSampler._trace checks a compiled SplitMix64 kernel against the eager one
_SPLITMIX_PROBE_SIZES = (2, 3, 8, 17, 67)


def is_compiler_failure(error: BaseException) -> bool:
    """Whether ``error`` says that compiling is impossible here (no C++ compiler, no Triton for the device, ...),
    which the samplers answer by falling back to eager kernels; never when running out of memory is anywhere in
    its chain of causes."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        # inductor wraps the original error in InductorError.inner_exception
        error = getattr(error, "inner_exception", None) or error.__cause__ or error.__context__  # type: ignore[assignment]
    if any(isinstance(e, (MemoryError, torch.OutOfMemoryError)) for e in chain):
        return False
    return any(type(e).__module__.startswith(("torch._dynamo", "torch._inductor")) or isinstance(e, OSError)
               for e in chain)


def _compiled_kernel(kind: str, dtype: torch.dtype, device_type: str) -> Callable[..., None] | None:
    """The torch.compile'd kernel for ``kind`` on one dtype and device type, or None if compiling is
    impossible here.

    Dynamo caps recompilations per *code object* (8 by default); one kernel used on four dtypes and two
    device types, as a mixed-precision model can need, would hit that cap. So every (kind, dtype, device)
    gets a copy of the function with its own code object, and each copy compiles once.
    """
    if kind in _compile_failed:
        return None
    key = (kind, dtype, device_type)
    with _compile_lock:
        if key not in _compiled_kernels:
            eager = _EAGER_KERNELS[kind]
            name = f"{eager.__name__}_{str(dtype).removeprefix('torch.')}_{device_type}"
            clone = types.FunctionType(eager.__code__.replace(co_name=name), eager.__globals__, name)
            _compiled_kernels[key] = torch.compile(clone, dynamic=True, fullgraph=True)
        return _compiled_kernels[key]


class CounterSampler(Sampler):
    """Counter-based directions (see the module docstring); ``kind`` is gaussian, uniform or rademacher.

    Args:
        kind: the distribution of each element of z (all have mean 0 and variance 1).
        backend: ``"compiled"`` (torch.compile, fails loudly if unavailable), ``"eager"``, or ``"auto"``
            (compiled, falling back to eager with a warning when no compiler works on this machine).
        chunk: elements per kernel call; bounds temporary memory (the result does not depend on it).
    """

    def __init__(self, kind: str = "gaussian", backend: str = "auto", chunk: int = 1 << 22) -> None:
        if kind not in _EAGER_KERNELS:
            raise ValueError(f"unknown counter sampler kind {kind!r}; choose one of {sorted(_EAGER_KERNELS)}")
        if backend not in ("auto", "compiled", "eager"):
            raise ValueError(f"backend must be 'auto', 'compiled' or 'eager', got {backend!r}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.kind = kind
        self.name = kind
        self.backend = backend
        self.chunk = chunk

    def _kernel(self, flat: torch.Tensor) -> Callable[..., None]:
        if self.backend == "eager":
            return _EAGER_KERNELS[self.kind]
        kernel = _compiled_kernel(self.kind, flat.dtype, flat.device.type)
        if kernel is None:
            return _EAGER_KERNELS[self.kind]
        return kernel

    def add_(self, flat: torch.Tensor, direction: Direction, alpha: float, decay: float = 1.0) -> None:
        device = flat.device
        key = torch.tensor(direction.key, dtype=torch.int64, device=device)
        # scalars in float64 so float64 weights lose nothing; as 0-d tensors they do not promote float32
        # weights (MPS has no float64)
        scalar_dtype = torch.float32 if device.type == "mps" else torch.float64
        alpha_t = torch.tensor(alpha, dtype=scalar_dtype, device=device)
        decay_t = torch.tensor(decay, dtype=scalar_dtype, device=device)
        numel = flat.numel()
        # eager keeps its int64 temporaries small; the compiled kernel has none and takes bigger chunks
        chunk = self.chunk if self.backend != "eager" else min(self.chunk, 1 << 18)
        for start in range(0, numel, chunk):
            piece = flat[start : start + chunk]
            start_t = torch.tensor(start, dtype=torch.int64, device=device)
            if piece.numel() == 1 and self.backend != "eager":
                # dynamic shapes still specialise on size 1; a 2-element scratch keeps one compiled kernel
                # (and its exact bits) for every size
                scratch = torch.cat([piece, piece.new_zeros(1)])
                self._run(scratch, key, start_t, alpha_t, decay_t)
                piece.copy_(scratch[:1])
            else:
                self._run(piece, key, start_t, alpha_t, decay_t)

    def _run(self, flat: torch.Tensor, *args: torch.Tensor) -> None:
        # detached: a view's autograd base (a 2-D weight, a 1-D norm, a block of a flat buffer) enters dynamo's
        # guards, so each kind of base recompiled the kernel (with the tracing below, a gaussian pass over
        # SmolLM2's weights went from 0.78 to 0.36 s on AVX2: benchmarks/rng/results/step.*.json)
        args = tuple(arg.detach() for arg in (flat, *args))
        kernel = self._kernel(flat)
        if self.backend == "eager" or kernel is _EAGER_KERNELS[self.kind]:
            kernel(*args)
            return
        if kernel not in _traced_kernels:
            try:
                applied = self._trace(kernel, *args)
            except Exception as error:
                if self.backend == "compiled" or not is_compiler_failure(error):
                    raise  # out of memory, a bad input, ...: the caller's error, not a missing compiler
                _compile_failed.add(self.kind)
                warnings.warn(
                    f"torch.compile is unavailable here ({type(error).__name__}: {error}); the {self.kind} sampler "
                    "falls back to eager kernels, which are several times slower",
                    RuntimeWarning,
                    stacklevel=3,
                )
                _EAGER_KERNELS[self.kind](*args)
                return
            _traced_kernels.add(kernel)
            if applied:
                return
        kernel(*args)  # compiled already: whatever it raises is a real error and surfaces

    def _trace(self, kernel: Callable[..., None], *args: torch.Tensor) -> bool:
        """Compile ``kernel`` on its first real call, and use it only if it computes what the eager kernel does;
        True when that call was applied here.

        The compiled SplitMix64 kernel has been seen to write wrong values: torch 2.6's inductor on an AVX-512
        CPU filled only the first 3 of 8 elements (``.ci/results/floors.2026-12-02.log``). So the first call
        compiles on a copy of the real block (the shape hints stay those of a real block), and that copy and a
        few small sizes (where vectorised loops have their tails) are compared with the eager kernel. On a
        mismatch backend ``auto`` falls back to eager kernels for this kind, with a warning, and ``compiled``
        raises. The tolerance allows last-ulp differences of log, cos and sqrt between the backends.
        """
        flat, key, start, alpha, decay = args
        compiled = flat.clone()
        kernel(compiled, key, start, alpha, decay)
        probes = [(compiled, flat.clone(), start)]
        for size in _SPLITMIX_PROBE_SIZES:
            probe = flat.new_zeros(size)
            kernel(probe, key, start, alpha, decay)
            probes.append((probe, flat.new_zeros(size), start))
        for got, expected, offset in probes:
            for at in range(0, expected.numel(), 1 << 18):  # small chunks bound the eager int64 temporaries
                _EAGER_KERNELS[self.kind](expected[at: at + (1 << 18)], key, offset + at, alpha, decay)
            tolerance = max(1e-4, 8 * torch.finfo(flat.dtype).eps)
            if not torch.allclose(got.float(), expected.float(), rtol=tolerance, atol=tolerance):
                wrong = int((~torch.isclose(got.float(), expected.float(), rtol=tolerance, atol=tolerance)).sum())
                message = (f"the compiled SplitMix64 {self.kind} kernel gives wrong values on this machine (torch "
                           f"{torch.__version__}: {wrong} of {got.numel()} elements differ from the eager kernel)")
                if self.backend == "compiled":
                    raise RuntimeError(message)
                _compile_failed.add(self.kind)
                warnings.warn(f"{message}; the {self.kind} sampler falls back to eager kernels", RuntimeWarning,
                              stacklevel=4)
                _EAGER_KERNELS[self.kind](flat, key, start, alpha, decay)
                return True
        flat.copy_(compiled)
        return True

    def sample(self, numel: int, direction: Direction, device: torch.device | str = "cpu") -> torch.Tensor:
        device = torch.device(device)
        key = torch.tensor(direction.key, dtype=torch.int64, device=device)
        start = torch.tensor(0, dtype=torch.int64, device=device)
        return _TRANSFORMS[self.kind](counter_bits(start, numel, key, device))

    def config(self) -> dict[str, Any]:
        """The stream's identity, compared when a checkpoint is loaded (the backend is not: same bits)."""
        return {"kind": self.name}

    def __repr__(self) -> str:
        return f"CounterSampler(kind={self.kind!r}, backend={self.backend!r})"


# ---------------------------------------------------------------------------------------------------------
# Threefry samplers: 32-bit words only, two numbers per draw
# ---------------------------------------------------------------------------------------------------------

THREEFRY_BLOCK = 1 << 21  # elements per block of the stream's layout (see ThreefrySampler)


def _block_pairs(numel: int) -> list[int]:
    """The first pair of each kernel call of a tensor of ``numel`` elements: one per block of its even part,
    then, for an odd ``numel``, the pair whose first number is the last element."""
    even = numel - numel % 2
    pairs = [start // 2 for start in range(0, even, THREEFRY_BLOCK)]
    if numel % 2:
        pairs.append((numel - 1) // 2)
    return pairs


def _signed32(word: int) -> int:
    """A 32-bit word as the int32 with the same bits."""
    return word - (1 << 32) if word >= 1 << 31 else word


def _float64_words(value: float) -> list[int]:
    """The two int32 words (little-endian, as a float64 view of them reads) of ``value``'s float64 bits."""
    bits = struct.unpack("<q", struct.pack("<d", value))[0]
    return [_signed32(bits & 0xFFFFFFFF), _signed32((bits >> 32) & 0xFFFFFFFF)]


class _StagedCall(NamedTuple):
    coefficients: torch.Tensor  # [alpha, decay], float64 on the device
    words: list[torch.Tensor]  # [k0, k1, lo, hi] per kernel call, int32 on the device
_PAIR_TRANSFORMS: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "gaussian": gaussian_pair,
    "uniform": uniform_pair,
    "rademacher": rademacher_pair,
}


def _blend_(target: torch.Tensor, z: torch.Tensor, alpha: torch.Tensor, decay: torch.Tensor) -> None:
    """target <- decay * target + alpha * z in place, rounding once for half precision."""
    if target.dtype == torch.float32:
        target.mul_(decay).add_(z * alpha)
    elif target.dtype == torch.float64:
        target.mul_(decay).add_(z.double() * alpha)
    else:
        target.copy_((target.to(torch.float32) * decay + z * alpha).to(target.dtype))


def threefry_block_pairs(pairs: int, words: torch.Tensor, transform: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                         device: torch.device, rounds: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of one block: ``pairs`` draws, pair t with counter words ``(lo + t, hi)`` under key words
    ``(k0, k1)``, where ``words = [k0, k1, lo, hi]`` (int32), through Threefry-2x32-``rounds`` and ``transform``."""
    c0 = torch.arange(pairs, dtype=torch.int32, device=device) + words[2]
    w0, w1 = threefry2x32(c0, words[3], words[0], words[1], rounds=rounds)
    return transform(w0, w1)


def _threefry_update(first, second, words, coefficients, transform, rounds=20):  # type: ignore[no-untyped-def]
    # the two halves of a block come in as two (non-overlapping) tensors: one loop then computes each draw
    # once and stores its two numbers straight into them (slices of one input made inductor scatter through
    # temporaries in a second pass). The scalars come packed in two small tensors, [k0, k1, lo, hi] and
    # [alpha, decay]: each 0-d tensor argument cost a torch.tensor call and a guard per kernel call.
    z0, z1 = threefry_block_pairs(first.shape[0], words, transform, first.device, rounds)
    _blend_(first, z0, coefficients[0], coefficients[1])
    _blend_(second, z1, coefficients[0], coefficients[1])


def _threefry_gaussian(first, second, words, coefficients):  # type: ignore[no-untyped-def]
    _threefry_update(first, second, words, coefficients, gaussian_pair)


def _threefry_uniform(first, second, words, coefficients):  # type: ignore[no-untyped-def]
    _threefry_update(first, second, words, coefficients, uniform_pair)


def _threefry_rademacher(first, second, words, coefficients):  # type: ignore[no-untyped-def]
    _threefry_update(first, second, words, coefficients, rademacher_pair)


# Threefry-2x32-13: the fewest rounds Random123 reports as Crush-resistant for 2x32 words (BigCrush passes; 20 is
# its default, with a safety margin, and JAX's). Plain module-level functions, one per kind, because
# _compiled_kernel clones each kernel's code object (a closure over ``rounds`` would not survive the clone).


def _threefry13_gaussian(first, second, words, coefficients):  # type: ignore[no-untyped-def]
    _threefry_update(first, second, words, coefficients, gaussian_pair, 13)


def _threefry13_uniform(first, second, words, coefficients):  # type: ignore[no-untyped-def]
    _threefry_update(first, second, words, coefficients, uniform_pair, 13)


def _threefry13_rademacher(first, second, words, coefficients):  # type: ignore[no-untyped-def]
    _threefry_update(first, second, words, coefficients, rademacher_pair, 13)


_EAGER_KERNELS.update({
    "threefry-gaussian": _threefry_gaussian,
    "threefry-uniform": _threefry_uniform,
    "threefry-rademacher": _threefry_rademacher,
    "threefry13-gaussian": _threefry13_gaussian,
    "threefry13-uniform": _threefry13_uniform,
    "threefry13-rademacher": _threefry13_rademacher,
})
THREEFRY_ROUNDS = (20, 13)  # the round counts a ThreefrySampler offers
# (kind, rounds, dtype) -> whether the native kernel agreed with the eager one (ThreefrySampler._native_agrees)
_native_checked: dict[tuple[str, int, torch.dtype], bool] = {}
_native_warned: set[tuple[str, int, torch.dtype]] = set()
_NATIVE_PROBE_SIZES = (1, 2, 3, 33, 67, 4099, THREEFRY_BLOCK + 5)
EAGER_NUMBERS_BEFORE_COMPILING = 1 << 26  # see ThreefrySampler._before_compiling


class ThreefrySampler(CounterSampler):
    """Counter-based directions from Threefry-2x32-20 (``zotune.core.threefry``): 32-bit arithmetic only,
    so the fused generate-and-add kernel vectorises on AVX2 as on AVX-512 and GPUs, and each draw gives two
    numbers (both Box-Muller branches for ``gaussian``).

    The stream: a tensor's n elements are cut into blocks of ``THREEFRY_BLOCK`` (the last one shorter). In a
    block of 2m elements starting at element 2p, pair t (counter words ``((p + t) mod 2^31, (p + t) >> 31)``,
    key words the low and high halves of the direction's 64-bit key) gives element t its first number and
    element m + t its second. With n odd, the last element takes the first number of pair (n - 1) / 2. So
    both numbers of a draw land in contiguous runs, and z depends only on (key, n), never on how it is
    computed.

    Backends: ``auto`` (the native C kernel for contiguous CPU float32 / bfloat16 tensors where it builds and
    passes its first check, else the torch kernels: eager for the first ``compile_after`` numbers, then
    compiled), ``native`` (the C kernel or an error), ``compiled`` and ``eager`` (the torch kernels). All give
    the same bits on the CPU.
    """

    def __init__(self, kind: str = "gaussian", backend: str = "auto", stage: str = "auto", rounds: int = 20,
                 compile_after: int = EAGER_NUMBERS_BEFORE_COMPILING) -> None:
        if kind not in _PAIR_TRANSFORMS:
            raise ValueError(f"unknown threefry sampler kind {kind!r}; choose one of {sorted(_PAIR_TRANSFORMS)}")
        if rounds not in THREEFRY_ROUNDS:
            raise ValueError(f"rounds must be one of {THREEFRY_ROUNDS} (Random123's default and its Crush-resistant "
                             f"minimum for Threefry-2x32), got {rounds!r}")
        if stage not in ("auto", "always", "never"):
            raise ValueError(f"stage must be 'auto', 'always' or 'never', got {stage!r}")
        if backend not in ("auto", "native", "compiled", "eager"):
            raise ValueError(f"backend must be 'auto', 'native', 'compiled' or 'eager', got {backend!r}")
        super().__init__("gaussian", backend="auto" if backend == "native" else backend)
        self.backend = backend
        self.distribution = kind
        if compile_after < 0:
            raise ValueError(f"compile_after must be >= 0, got {compile_after}")
        self.rounds = rounds
        # backend "auto" on the CPU: eager kernels until this many numbers were drawn, then the compiled one
        self.compile_after = compile_after
        self.eager_numbers = 0
        self.kind = f"threefry-{kind}" if rounds == 20 else f"threefry{rounds}-{kind}"
        self.name = kind if rounds == 20 else f"{kind}-{rounds}"
        # "auto": a pass's scalars go to an accelerator in one copy (prepare); on the CPU there is no copy to
        # save and each call builds its own two small tensors
        self.stage = stage
        self.uploads = 0  # host-to-device copies of scalars made (staged passes count one each)
        self._staged: dict[PlannedCall, list[_StagedCall]] = {}

    def _stages(self, device: torch.device) -> bool:
        if self.stage == "never" or device.type == "mps" or sys.byteorder != "little":
            return False  # MPS: float32 scalars, per call; the packing writes float64 bits as little-endian words
        return self.stage == "always" or device.type != "cpu"

    def prepare(self, calls: list[PlannedCall]) -> None:
        """Pack every call's scalars, ``[alpha, decay]`` as float64 and ``[k0, k1, lo, hi]`` per block, into one
        int32 host buffer per device and copy it once; ``add_`` then takes views of the device copy."""
        by_device: dict[torch.device, list[int]] = {}
        waiting = {call: len(entries) for call, entries in self._staged.items()}
        for index, call in enumerate(calls):
            if waiting.get(call, 0) > 0:  # announced before and not used yet: nothing to copy again
                waiting[call] -= 1
            elif self._stages(call.device):
                by_device.setdefault(call.device, []).append(index)
        for device, indices in by_device.items():
            words: list[int] = []
            layout: list[tuple[int, list[int]]] = []
            for index in indices:
                call = calls[index]
                coefficient_at = len(words)  # even: a float64 view needs 8-byte alignment
                words.extend(_float64_words(call.alpha) + _float64_words(call.decay))
                key = split_key(call.direction.key)
                blocks = []
                for pair in _block_pairs(call.numel):
                    blocks.append(len(words))
                    words.extend(_signed32(w) for w in (key[0], key[1], pair & 0x7FFFFFFF, pair >> 31))
                layout.append((coefficient_at, blocks))
            host = torch.tensor(words, dtype=torch.int32)
            if device.type == "cuda":
                host = host.pin_memory()
            buffer = host.to(device, non_blocking=True)
            self.uploads += 1
            for index, (at, blocks) in zip(indices, layout):
                call = calls[index]
                self._staged.setdefault(call, []).append(
                    _StagedCall(buffer[at: at + 4].view(torch.float64), [buffer[b: b + 4] for b in blocks]))

    def release(self) -> None:
        self._staged = {}

    def _take_staged(self, flat: torch.Tensor, direction: Direction, alpha: float, decay: float) -> "_StagedCall | None":
        """The prepared scalars of this exact call (same size, device, direction, alpha and decay), if announced."""
        if not self._staged:
            return None
        waiting = self._staged.get(PlannedCall(flat.numel(), flat.device, direction, alpha, decay))
        return waiting.pop(0) if waiting else None

    def numbers_drawn(self, numel: int) -> int:
        return numel  # numel numbers from ceil(numel / 2) draws

    def add_(self, flat: torch.Tensor, direction: Direction, alpha: float, decay: float = 1.0) -> None:
        device = flat.device
        staged = self._take_staged(flat, direction, alpha, decay)
        if self._uses_native(flat):
            native.add_(flat, self.distribution, self.rounds, split_key(direction.key), alpha, decay)
            return
        if staged is not None:
            coefficients, block_words = staged.coefficients, staged.words
        else:
            key = split_key(direction.key)
            scalar_dtype = torch.float32 if device.type == "mps" else torch.float64
            coefficients = torch.tensor([alpha, decay], dtype=scalar_dtype, device=device)
            block_words = [torch.tensor([key[0], key[1], pair & 0x7FFFFFFF, pair >> 31], dtype=torch.int32, device=device)
                           for pair in _block_pairs(flat.numel())]
            if device.type != "cpu":
                self.uploads += 1 + len(block_words)
        numel = flat.numel()
        even = numel - numel % 2
        for index, start in enumerate(range(0, even, THREEFRY_BLOCK)):
            count = min(THREEFRY_BLOCK, even - start)
            self._run_block(flat[start: start + count], block_words[index], coefficients)
        if numel % 2:  # the last element: the first number of pair (numel - 1) / 2
            scratch = torch.cat([flat[-1:], flat.new_zeros(3)])  # 4 elements: pairs p and p + 1, no size-1 kernel
            self._run_block(scratch, block_words[-1], coefficients)
            flat[-1:].copy_(scratch[:1])

    def _uses_native(self, flat: torch.Tensor) -> bool:
        """Whether this call goes to the native kernel (``zotune.core.native``): backend ``auto`` on a CPU tensor
        it takes, once it is built and has passed its check for this kind, round count and dtype; backend
        ``native`` always, or an error saying why not."""
        if self.backend not in ("auto", "native") or flat.device.type != "cpu":
            if self.backend == "native":
                raise ValueError(f"backend 'native' runs on the CPU only, got a tensor on {flat.device}")
            return False
        if not native.supports(flat):
            if self.backend == "native":
                raise ValueError(f"backend 'native' takes contiguous float32 or bfloat16 tensors, got {flat.dtype}")
            return False
        if not native.available():
            if self.backend == "native":
                raise RuntimeError(f"the native Threefry kernel is unavailable: {native.unavailable_reason()}")
            return False
        check = (self.distribution, self.rounds, flat.dtype)
        if check not in _native_checked:
            with _compile_lock:
                if check not in _native_checked:
                    _native_checked[check] = self._native_agrees(flat.dtype)
        if not _native_checked[check]:
            message = (f"the native {self.name} kernel gives other bits than the torch kernel for {flat.dtype} on "
                       "this machine")
            if self.backend == "native":
                raise RuntimeError(message)
            if check not in _native_warned:
                _native_warned.add(check)
                warnings.warn(f"{message}; the sampler uses the torch kernel instead", RuntimeWarning, stacklevel=4)
            return False
        return True

    def _native_agrees(self, dtype: torch.dtype) -> bool:
        """The native kernel's numbers against the eager torch kernel's, bit for bit, at sizes that reach every
        path of its loop (an odd last element, a partial vector of 32 counters, two blocks of the layout)."""
        reference = ThreefrySampler(self.distribution, backend="eager", rounds=self.rounds)
        direction = Direction(base_seed=20261203, step=7, query=1, param_id=3)
        for numel in _NATIVE_PROBE_SIZES:
            start = (torch.arange(numel, dtype=torch.float32) * 0.001 - 0.5).to(dtype)
            expected, got = start.clone(), start.clone()
            reference.add_(expected, direction, 0.37, 0.9)
            native.add_(got, self.distribution, self.rounds, split_key(direction.key), 0.37, 0.9)
            if not torch.equal(expected.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                               got.view(torch.int16 if dtype == torch.bfloat16 else torch.int32)):
                return False
        return True

    def _run_block(self, region: torch.Tensor, words: torch.Tensor, coefficients: torch.Tensor) -> None:
        """One even-sized block of 2m elements, ``words = [k0, k1, lo, hi]`` with its first pair ``(lo, hi)``:
        elements t and m + t from pair + t."""
        half = region.numel() // 2
        if half == 1:  # dynamic shapes specialise on size 1: run 2 pairs, keep 1
            scratch = torch.cat([region[:1], region.new_zeros(1), region[1:], region.new_zeros(1)])
            self._run(scratch[:2], scratch[2:], words, coefficients)
            region.copy_(scratch[0::2])  # a strided view: an index list would be a host-to-device copy
            return
        self._run(region[:half], region[half:], words, coefficients)

    def _run(self, flat: torch.Tensor, *args: torch.Tensor) -> None:
        if self._before_compiling(flat):
            self.eager_numbers += 2 * flat.numel()  # flat is a block's first half: one number per pair in each half
            _EAGER_KERNELS[self.kind](flat.detach(), *(arg.detach() for arg in args))
            return
        super()._run(flat, *args)

    def _before_compiling(self, first: torch.Tensor) -> bool:
        """Whether this call runs eagerly because compiling would not pay yet (backend ``auto``, CPU).

        Compiling the kernel costs 34.5 s from a cold inductor cache on 2 cores (AVX-512), and eager draws cost
        27 ns a number against 1.5 compiled (``benchmarks/rng/compile_cost.py``), so compiling pays only after
        about 1.3G numbers: a prefix-tuning run (57,600 numbers a pass, 35M in the main job's 200 steps) never
        repays it, full fine-tuning of a 135M model within a few steps. So the first ``compile_after`` numbers
        (2^26 by default: about 1.8 s of eager draws) are drawn eagerly. On the CPU both kernels give the same
        bits for every parameter dtype (``tests/test_samplers.py``), so where the switch falls changes no number.
        On GPUs the compiled kernel may fuse multiply-adds, so they always compile.
        """
        if self.backend != "auto" or first.device.type != "cpu" or self.eager_numbers >= self.compile_after:
            return False
        kernel = _compiled_kernel(self.kind, first.dtype, first.device.type)
        return kernel is not None and kernel not in _traced_kernels

    def _trace(self, kernel: Callable[..., None], first: torch.Tensor, second: torch.Tensor, *scalars: torch.Tensor) -> bool:
        """Compile ``kernel`` on a scratch buffer laid out so that one general graph serves every block.

        dynamo traces with the first inputs it sees and reads their values as hints. On a real block the
        second half starts where the first one's size ends, so duck shaping equated the two and the graph,
        specialised on that, was slow; a tiny scratch block instead made inductor plan for six elements, as
        slow. Here the halves have a block's size (2^20) and start at 0 and 2^20 + 17, then at 3 and
        2^20 + 19: one graph, no recompilation, and on AVX2 2.5 ns per element for every tensor layout
        against 2.6-4.3 (``benchmarks/rng/trace_layout.py``).
        """
        half = THREEFRY_BLOCK // 2
        scratch = first.new_zeros(2 * half + 32)
        kernel(scratch[:half].detach(), scratch[half + 17: 2 * half + 17].detach(), *scalars)
        kernel(scratch[3: half + 3].detach(), scratch[half + 19: 2 * half + 19].detach(), *scalars)
        return False

    def sample(self, numel: int, direction: Direction, device: torch.device | str = "cpu") -> torch.Tensor:
        out = torch.zeros(numel, dtype=torch.float32, device=torch.device(device))
        backend, self.backend = self.backend, "eager"
        try:
            self.add_(out, direction, 1.0)
        finally:
            self.backend = backend
        return out

    def __repr__(self) -> str:
        return f"ThreefrySampler(kind={self.name!r}, backend={self.backend!r}, rounds={self.rounds})"


# ---------------------------------------------------------------------------------------------------------
# torch.Generator samplers
# ---------------------------------------------------------------------------------------------------------


class TorchGeneratorSampler(Sampler):
    """Gaussian z from ``torch.Generator.normal_``, reseeded per chunk with ``mix(key, chunk_index)``.

    The generator lives on the parameter's device and is used by nothing else, so no other code's RNG use
    can shift z. Chunking bounds the scratch buffer to ``chunk`` elements and makes z independent of how a
    tensor is split across calls.
    """

    name = "gaussian-torch"

    def __init__(self, chunk: int = 1 << 20) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.chunk = chunk
        self._generators: dict[torch.device, torch.Generator] = {}
        self._buffers: dict[torch.device, torch.Tensor] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device)
        return self._generators[device]

    def _fill(self, out: torch.Tensor, key: int, chunk_index: int) -> torch.Tensor:
        generator = self._generator(out.device)
        generator.manual_seed(mix(key, chunk_index) & ((1 << 63) - 1))
        return out.normal_(generator=generator)

    def add_(self, flat: torch.Tensor, direction: Direction, alpha: float, decay: float = 1.0) -> None:
        key = direction.key
        device = flat.device
        buffer = self._buffers.get(device)
        if buffer is None or buffer.numel() < min(self.chunk, flat.numel()):
            buffer = torch.empty(min(self.chunk, max(flat.numel(), 1)), dtype=torch.float32, device=device)
            self._buffers[device] = buffer
        if decay != 1.0:
            flat.mul_(decay)
        for index, start in enumerate(range(0, flat.numel(), self.chunk)):
            piece = flat[start : start + self.chunk]
            z = self._fill(buffer[: piece.numel()], key, index)
            piece.add_(z.to(piece.dtype), alpha=alpha)

    def sample(self, numel: int, direction: Direction, device: torch.device | str = "cpu") -> torch.Tensor:
        device = torch.device(device)
        out = torch.empty(numel, dtype=torch.float32, device=device)
        for index, start in enumerate(range(0, numel, self.chunk)):
            self._fill(out[start : start + self.chunk], direction.key, index)
        return out

    def __repr__(self) -> str:
        return f"TorchGeneratorSampler(chunk={self.chunk})"


# ---------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------

_SAMPLER_FACTORIES: dict[str, Callable[..., Sampler]] = {
    "gaussian": lambda **kw: ThreefrySampler("gaussian", **kw),
    "uniform": lambda **kw: ThreefrySampler("uniform", **kw),
    "rademacher": lambda **kw: ThreefrySampler("rademacher", **kw),
    # the same streams through Threefry-2x32-13 (a named variant: a third fewer rounds, other numbers)
    "gaussian-13": lambda **kw: ThreefrySampler("gaussian", rounds=13, **kw),
    "uniform-13": lambda **kw: ThreefrySampler("uniform", rounds=13, **kw),
    "rademacher-13": lambda **kw: ThreefrySampler("rademacher", rounds=13, **kw),
    # the SplitMix64 streams of zotune before Threefry (64-bit multiplies: slow without AVX-512)
    "gaussian-splitmix": lambda **kw: CounterSampler("gaussian", **kw),
    "uniform-splitmix": lambda **kw: CounterSampler("uniform", **kw),
    "rademacher-splitmix": lambda **kw: CounterSampler("rademacher", **kw),
    "gaussian-torch": lambda **kw: TorchGeneratorSampler(**kw),
}


def register_sampler(name: str, factory: Callable[..., Sampler]) -> None:
    """Make ``make_sampler(name, **options)`` build samplers with ``factory(**options)``."""
    if name in _SAMPLER_FACTORIES:
        raise ValueError(f"a sampler named {name!r} is already registered")
    _SAMPLER_FACTORIES[name] = factory


def available_samplers() -> list[str]:
    return sorted(_SAMPLER_FACTORIES)


def make_sampler(spec: str | Sampler, **options: Any) -> Sampler:
    """A sampler from its registered name (options go to its constructor), or the sampler itself."""
    if isinstance(spec, Sampler):
        if options:
            raise ValueError("sampler options can only be given together with a sampler name")
        return spec
    if spec not in _SAMPLER_FACTORIES:
        raise ValueError(f"unknown sampler {spec!r}; choose one of {available_samplers()}")
    return _SAMPLER_FACTORIES[spec](**options)
