"""Synthesisable random-number front ends of a ZO step, in Amaranth HDL.

Every design delivers ``lanes`` perturbation values per clock on ``z`` (``lanes`` words of ``word_width``
bits, lane 0 in the low bits) and registers its outputs. The designs:

* :class:`CLTGaussian`: a central-limit Gaussian, the sum of k uniform words from k LFSRs per lane.
* :class:`ICDFGaussian`: an inverse-CDF Gaussian: one LFSR per lane gives a sign and an m-bit index into a
  ROM of half-normal quantiles.
* :class:`UniformAdaptive`: uniform b-bit numbers scaled adaptively *without* reuse: a fresh value per lane
  and clock, ||v||^2 over each group of n lanes by squarers and an adder tree, the scale from a
  reciprocal-square-root table, a multiplier per lane.
* :class:`PeZOOnTheFly`: PeZO's generator as :class:`zotune.algorithms.pezo_rng.PeZORNGSampler` defines it:
  n b-bit permutation-walk RNGs stepped in lockstep, the list rotated every 2^b - 1 calls, the scale read
  from a table keyed by the original first RNG's value, n scaling multipliers, the n values tiled over the
  lanes. Source ``"rom"`` stores zotune's permutations (``rng_permutations(seed, n, b)``; bit-exact with
  the sampler); source ``"lfsr"`` walks de Bruijn counters instead (no ROM; the permutation is then the
  counter's, see :func:`zotune.hw.models.lfsr_permutations`). Output ``"fixed"`` or ``"float32"`` (the
  sampler's own float32 words).
* :class:`PeZOPreGeneration`: PeZO's pre-generation mode: the pool (``pregeneration_pool``) in ``lanes``
  ROM banks, ``lanes`` consecutive words read per clock from any position, with wrap-around.

Each design lists its registers and named nets (:attr:`Generator.tracked`) for the switching-activity
proxy of :mod:`zotune.hw.activity`.
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, signed
from amaranth.lib.memory import Memory

from zotune.algorithms.pezo_rng import expected_gaussian_norm, pregeneration_pool, rng_permutations
from zotune.hw import models

FORMATS = ("fixed", "float32")
SOURCES = ("rom", "lfsr")


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return value


def _lfsr_next(state, width: int, steps: int, debruijn: bool = False):
    """Expression for ``steps`` Fibonacci-LFSR steps of ``state`` (XAPP052 taps; see models.lfsr_step).

    A leap of a linear LFSR is linear over GF(2): each new bit is the XOR of a fixed set of current bits,
    found here by stepping bit masks, so the expression stays one XOR per output bit whatever ``steps``.
    The de Bruijn counter (``debruijn=True``) is not linear and takes one step.
    """
    taps = models.LFSR_TAPS[width]
    if debruijn:
        if steps != 1:
            raise ValueError("the de Bruijn counter steps once per clock")
        bits = [state[i] for i in range(width)]
        feedback = bits[taps[0] - 1]
        for tap in taps[1:]:
            feedback = feedback ^ bits[tap - 1]
        feedback = feedback ^ (Cat(*bits[: width - 1]) == 0)
        return Cat(feedback, *bits[:-1])
    masks = [1 << i for i in range(width)]
    for _ in range(steps):
        feedback = 0
        for tap in taps:
            feedback ^= masks[tap - 1]
        masks = [feedback] + masks[:-1]
    out = []
    for mask in masks:
        terms = [state[i] for i in range(width) if mask >> i & 1]
        expr = terms[0]
        for term in terms[1:]:
            expr = expr ^ term
        out.append(expr)
    return Cat(*out)


def _saturate(value, width: int):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    return Mux(value > hi, hi, Mux(value < lo, lo, value))


class Generator(Elaboratable):
    """Common interface: ``z`` (``lanes * word_width`` bits), ``lanes``, ``word_width``, ``frac``,
    ``latency`` (clocks from a call to its words on ``z``), ``tracked`` (signal, kind) pairs filled at
    elaboration, kind in {"reg", "net", "mem"}."""

    name = "generator"
    _MustUse__silence = True  # a design may be built only to be inspected or rejected by validation

    def __init__(self, lanes: int, word_width: int, frac: int) -> None:
        self.lanes = _check_int("lanes", lanes, 1, 4096)
        self.word_width = _check_int("word_width", word_width, 2, 64)
        self.frac = _check_int("frac", frac, 0, word_width - 1)
        self.z = Signal(lanes * word_width, name="z")
        self.tracked: list[tuple[Signal, str]] = []
        self.latency = 1

    def _reg(self, name: str, shape, init: int = 0) -> Signal:
        sig = Signal(shape, name=name, init=init)
        self.tracked.append((sig, "reg"))
        return sig

    def _net(self, name: str, shape, kind: str = "net") -> Signal:
        sig = Signal(shape, name=name)
        self.tracked.append((sig, kind))
        return sig

    def ports(self) -> list[Signal]:
        return [self.z]

    def params(self) -> dict[str, object]:
        return {"lanes": self.lanes, "word_width": self.word_width, "frac": self.frac}


# ---------------------------------------------------------------------------------------------------------
# Gaussian baselines
# ---------------------------------------------------------------------------------------------------------


class CLTGaussian(Generator):
    """Central-limit Gaussian: z = (sum of k u-bit uniforms - mean) / std per lane, each uniform the low u
    bits of its own ``lfsr_width``-bit LFSR advanced u steps per clock. k = 12 makes std ~ 2^u, so the
    normalisation is a shift (the classic "sum of twelve uniforms minus six"); other k use a constant
    multiply. Output fixed point (``word_width`` bits, ``frac`` fractional)."""

    name = "clt"

    def __init__(self, lanes: int, k: int = 12, uniform_bits: int = 12, lfsr_width: int = 32, frac: int = 11,
                 word_width: int = 16, seed: int = 0) -> None:
        super().__init__(lanes, word_width, frac)
        self.k = _check_int("k", k, 2, 64)
        self.uniform_bits = _check_int("uniform_bits", uniform_bits, frac + 1, lfsr_width)
        if lfsr_width not in models.LFSR_TAPS:
            raise ValueError(f"lfsr_width must be one of {sorted(models.LFSR_TAPS)}")
        self.lfsr_width = lfsr_width
        self.seed = seed
        self.latency = 2

    def params(self) -> dict[str, object]:
        return {**super().params(), "k": self.k, "uniform_bits": self.uniform_bits, "lfsr_width": self.lfsr_width}

    def elaborate(self, platform) -> Module:
        m = Module()
        u, k = self.uniform_bits, self.k
        seeds = models.lfsr_seeds(self.seed, self.lanes * k, self.lfsr_width, tag=0xC17)
        sum_bits = u + math.ceil(math.log2(k)) + 1
        mean2 = k * ((1 << u) - 1)  # 2 * mean of the sum
        std2 = 2 * math.sqrt(k * ((1 << (2 * u)) - 1) / 12)  # 2 * std
        out = []
        for lane in range(self.lanes):
            total = 0
            for j in range(k):
                state = self._reg(f"lfsr_{lane}_{j}", self.lfsr_width, init=seeds[lane * k + j])
                m.d.sync += state.eq(_lfsr_next(state, self.lfsr_width, u))
                total = total + state[:u]
            acc = self._reg(f"sum_{lane}", sum_bits)
            m.d.sync += acc.eq(total)
            centred = Signal(signed(sum_bits + 2), name=f"centred_{lane}")
            doubled = Cat(Const(0, 1), acc, Const(0, 1)).as_signed()  # 2 S, sign bit 0
            m.d.comb += centred.eq(doubled - mean2)  # 2 (S - mean), an integer
            zl = self._reg(f"z_{lane}", signed(self.word_width))
            if k == 12:  # 2 std = 2^(u+1) sqrt(1 - 4^-u): a shift (error < 2^-2u)
                m.d.sync += zl.eq(_saturate(centred >> (u + 1 - self.frac), self.word_width))
            else:
                gain_shift = 16
                gain = round(2.0 ** (self.frac + gain_shift) / std2)
                m.d.sync += zl.eq(_saturate((centred * gain + (1 << (gain_shift - 1))) >> gain_shift,
                                            self.word_width))
            out.append(zl)
        m.d.comb += self.z.eq(Cat(*out))
        return m


class ICDFGaussian(Generator):
    """Inverse-CDF Gaussian: per lane an LFSR advanced m + 1 steps per clock gives a sign bit and an m-bit
    index into a ROM of half-normal quantiles at bin midpoints (2^m words, synchronous read)."""

    name = "icdf"

    def __init__(self, lanes: int, index_bits: int = 10, lfsr_width: int = 32, frac: int = 11,
                 word_width: int = 16, seed: int = 0) -> None:
        super().__init__(lanes, word_width, frac)
        self.index_bits = _check_int("index_bits", index_bits, 2, 16)
        if lfsr_width not in models.LFSR_TAPS or lfsr_width <= index_bits:
            raise ValueError(f"lfsr_width must be one of {sorted(models.LFSR_TAPS)} and > index_bits")
        self.lfsr_width = lfsr_width
        self.seed = seed
        self.table = models.icdf_table(index_bits, frac, word_width)
        self.latency = 2

    def params(self) -> dict[str, object]:
        return {**super().params(), "index_bits": self.index_bits, "lfsr_width": self.lfsr_width}

    def elaborate(self, platform) -> Module:
        m = Module()
        mbits = self.index_bits
        seeds = models.lfsr_seeds(self.seed, self.lanes, self.lfsr_width, tag=0x1CDF)
        out = []
        for lane in range(self.lanes):
            state = self._reg(f"lfsr_{lane}", self.lfsr_width, init=seeds[lane])
            m.d.sync += state.eq(_lfsr_next(state, self.lfsr_width, mbits + 1))
            rom = Memory(shape=self.word_width - 1, depth=1 << mbits, init=self.table)
            m.submodules[f"rom_{lane}"] = rom
            port = rom.read_port(domain="sync", transparent_for=())
            sign = self._reg(f"sign_{lane}", 1)
            data = self._net(f"q_{lane}", self.word_width - 1, kind="mem")
            m.d.comb += [port.addr.eq(state[:mbits]), data.eq(port.data)]
            m.d.sync += sign.eq(state[mbits])
            zl = self._reg(f"z_{lane}", signed(self.word_width))
            m.d.sync += zl.eq(Mux(sign, -data, data))
            out.append(zl)
        m.d.comb += self.z.eq(Cat(*out))
        return m


# ---------------------------------------------------------------------------------------------------------
# Uniform with adaptive scaling, no reuse
# ---------------------------------------------------------------------------------------------------------


class UniformAdaptive(Generator):
    """Fresh uniform b-bit values every clock, scaled per group of n lanes to E||N(0, I_n)|| / ||v|| (PeZO's
    scaling rule) computed directly: squarers, an adder tree, a reciprocal-square-root table indexed by the
    top ``index_bits`` bits of ||v||^2, and a multiplier per lane. No reuse: every value is new."""

    name = "uniform-adaptive"

    def __init__(self, lanes: int, n: int, bits: int = 12, lfsr_width: int = 32, index_bits: int = 10,
                 frac: int = 11, word_width: int = 16, scale_bits: int = 17, seed: int = 0) -> None:
        super().__init__(lanes, word_width, frac)
        self.n = _check_int("n", n, 1, lanes)
        if lanes % n:
            raise ValueError(f"lanes ({lanes}) must be a multiple of n ({n})")
        self.bits = _check_int("bits", bits, 2, 16)
        if lfsr_width not in models.LFSR_TAPS or lfsr_width < bits:
            raise ValueError(f"lfsr_width must be one of {sorted(models.LFSR_TAPS)} and >= bits")
        self.lfsr_width = lfsr_width
        self.index_bits = _check_int("index_bits", index_bits, 2, 16)
        self.scale_bits = _check_int("scale_bits", scale_bits, 4, 24)
        self.seed = seed
        self.sumsq_bits = (n * (1 << (2 * bits - 2))).bit_length()
        if self.index_bits > self.sumsq_bits:
            raise ValueError("index_bits exceeds the bits of ||v||^2")
        typical = expected_gaussian_norm(n) / math.sqrt(n * (1 << (2 * bits - 2)) / 12)
        self.shift = math.floor(math.log2((2**scale_bits - 1) / typical)) - frac
        if self.shift < 1:
            raise ValueError("scale_bits too small")
        self.table = models.rsqrt_table(index_bits, self.sumsq_bits, n, frac, self.shift, scale_bits)
        self.latency = 4

    def params(self) -> dict[str, object]:
        return {**super().params(), "n": self.n, "bits": self.bits, "lfsr_width": self.lfsr_width,
                "index_bits": self.index_bits, "scale_bits": self.scale_bits}

    def elaborate(self, platform) -> Module:
        m = Module()
        b = self.bits
        seeds = models.lfsr_seeds(self.seed, self.lanes, self.lfsr_width, tag=0x0A1)
        out = []
        for g in range(self.lanes // self.n):
            v1s, sumsq = [], 0
            for j in range(self.n):
                lane = g * self.n + j
                state = self._reg(f"lfsr_{lane}", self.lfsr_width, init=seeds[lane])
                m.d.sync += state.eq(_lfsr_next(state, self.lfsr_width, b))
                v = state[:b].as_signed()
                v1 = self._reg(f"v1_{lane}", signed(b))
                m.d.sync += v1.eq(v)
                sumsq = sumsq + v * v
                v1s.append(v1)
            ss = self._reg(f"sumsq_{g}", self.sumsq_bits)
            m.d.sync += ss.eq(sumsq)
            rom = Memory(shape=self.scale_bits, depth=1 << self.index_bits, init=self.table)
            m.submodules[f"rsqrt_{g}"] = rom
            port = rom.read_port(domain="sync", transparent_for=())
            t = self._net(f"t_{g}", self.scale_bits, kind="mem")
            m.d.comb += [port.addr.eq(ss[self.sumsq_bits - self.index_bits:]), t.eq(port.data)]
            for j, v1 in enumerate(v1s):
                lane = g * self.n + j
                v2 = self._reg(f"v2_{lane}", signed(b))
                m.d.sync += v2.eq(v1)
                # v1 -> v2 happens while ss -> t is read, so v2 and t belong to the same vector
                prod = Signal(signed(b + self.scale_bits + 2), name=f"prod_{lane}")
                m.d.comb += prod.eq(v2 * Cat(t, Const(0, 1)).as_signed())
                zl = self._reg(f"z_{lane}", signed(self.word_width))
                m.d.sync += zl.eq(_saturate((prod + (1 << (self.shift - 1))) >> self.shift, self.word_width))
                out.append(zl)
        m.d.comb += self.z.eq(Cat(*out))
        return m


# ---------------------------------------------------------------------------------------------------------
# PeZO
# ---------------------------------------------------------------------------------------------------------


def _float_product(m: Module, v, t, bits: int, name: str):
    """Expression for binary32 bits of round32(v * s): v signed ``bits``-bit, t the binary32 bits of s
    (positive normal, or 0). Exact 24 x (bits-1) product, leading-one detect, round to nearest even."""
    sign = v < 0
    mag = Signal(bits, name=f"{name}_mag")
    m.d.comb += mag.eq(Mux(sign, -v, v))
    mant_in = Cat(t[:23], Const(1, 1))
    expo_in = t[23:31]
    product = Signal(bits + 24, name=f"{name}_p")
    m.d.comb += product.eq(mag * mant_in)
    top = Signal(range(bits + 1), name=f"{name}_k")  # product in [2^(23+k), 2^(24+k))
    mant = Signal(24, name=f"{name}_m")
    guard = Signal(name=f"{name}_g")
    sticky = Signal(name=f"{name}_s")
    with m.Switch(top):
        for k in range(bits + 1):
            with m.Case(k):
                m.d.comb += mant.eq(product[k:k + 24])
                if k >= 1:
                    m.d.comb += guard.eq(product[k - 1])
                if k >= 2:
                    m.d.comb += sticky.eq(product[: k - 1].any())
    msb = 0
    for k in range(1, bits + 1):
        msb = Mux(product[23 + k], k, msb)
    m.d.comb += top.eq(msb)
    rounded = Signal(25, name=f"{name}_r")
    m.d.comb += rounded.eq(mant + (guard & (sticky | mant[0])))
    carry = rounded[24]
    frac = Mux(carry, rounded[1:24], rounded[:23])
    expo = (expo_in + top + carry)[:8]
    zero = (mag == 0) | (expo_in == 0)
    return Mux(zero, 0, Cat(frac, expo, sign))


class PeZOOnTheFly(Generator):
    """PeZO's on-the-fly generator (``PeZORNGSampler(mode="on-the-fly")``) as hardware.

    One pulse on ``step`` advances the array by one call (one tensor, in the sampler's walk); between pulses
    the n scaled words are held and tiled over the lanes (lane i carries z[i mod n]; ``lanes`` must be a
    multiple of n). ``z`` shows the scaled words of call p ``latency`` clocks after the array is at call p
    (3 with the ROM source, 2 with the LFSR source), ``raw`` the n integers v_p one clock earlier.
    ``start_call`` sets the call p the array starts at (its registers' reset values).

    Pipeline: call p's registers (ROM address p mod 2^b, rotation count, rotation phase) -> ROM row (or the
    de Bruijn states) -> rotate (ROM source; the LFSR source rotates by moving states between slots) ->
    ``raw`` register, scale-table read keyed by the original first RNG's value -> multiply -> ``z``.

    Args:
        n, bits: RNGs in the array and bits per number (the sampler's ``n_rngs`` and ``bits``).
        lanes: values per clock (a multiple of n; default n).
        source: ``"rom"`` (zotune's permutations for ``seed``) or ``"lfsr"`` (de Bruijn counters).
        fmt: ``"fixed"`` (``word_width``-bit words, ``frac`` fractional bits; scale table of ``scale_bits``
            unsigned bits, z = (v t + 2^(shift-1)) >> shift) or ``"float32"`` (the sampler's float32 bits).
        seed: the sampler's ``base_seed`` (ROM source) or the phase seed (LFSR source).
        start_call: the array's call p at reset.
    """

    name = "pezo-otf"

    def __init__(self, n: int = 31, bits: int = 12, lanes: int | None = None, source: str = "rom",
                 fmt: str = "fixed", seed: int = 0, start_call: int = 0, frac: int = 11, word_width: int = 16,
                 scale_bits: int = 17) -> None:
        self.n = _check_int("n", n, 1, 1024)
        self.bits = _check_int("bits", bits, 2, 16)
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
        lanes = n if lanes is None else lanes
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < n or lanes % n:
            raise ValueError(f"lanes must be a positive multiple of n={n} (the tiled z[i mod n]), got {lanes!r}")
        super().__init__(lanes, 32 if fmt == "float32" else word_width, 0 if fmt == "float32" else frac)
        self.source, self.fmt, self.seed = source, fmt, seed
        self.start_call = _check_int("start_call", start_call, 0)
        self.scale_bits = scale_bits
        self.period = 1 << bits
        if source == "rom":
            self.perms = rng_permutations(seed, n, bits)
        else:
            self.perms = models.lfsr_permutations(seed, n, bits)
        if fmt == "fixed":
            self.table, self.shift = models.fixed_scale_table(self.perms, frac, scale_bits)
            self.table_width = scale_bits
        else:
            self.table = [models.f32_bits(s) for s in models.scale_values(self.perms)]
            self.shift, self.table_width = 0, 32
        self.step = Signal(name="step")
        self.raw = Signal(n * bits, name="raw")
        self.latency = 3 if source == "rom" else 2  # the ROM read adds a clock

    def ports(self) -> list[Signal]:
        return [self.step, self.z, self.raw]

    def params(self) -> dict[str, object]:
        return {**super().params(), "n": self.n, "bits": self.bits, "source": self.source, "fmt": self.fmt}

    def elaborate(self, platform) -> Module:
        m = Module()
        n, b, period = self.n, self.bits, self.period
        p0 = self.start_call
        rot_count = self._reg("rot_count", range(period - 1), init=p0 % (period - 1))
        rotate_next = Signal(name="rotate_next")  # the next call follows a rotation
        m.d.comb += rotate_next.eq(self.step & (rot_count == period - 2))
        with m.If(self.step):
            m.d.sync += rot_count.eq(Mux(rot_count == period - 2, 0, rot_count + 1))
        slots = []
        if self.source == "rom":
            address = self._reg("address", b, init=p0 % period)
            phase = self._reg("phase", range(n), init=(p0 // (period - 1)) % n)
            with m.If(self.step):
                m.d.sync += address.eq(address + 1)
            with m.If(rotate_next):
                m.d.sync += phase.eq(Mux(phase == n - 1, 0, phase + 1))
            rows = [sum((int(self.perms[k, a]) & (period - 1)) << (b * k) for k in range(n)) for a in range(period)]
            rom = Memory(shape=n * b, depth=period, init=rows)
            m.submodules.perm_rom = rom
            port = rom.read_port(domain="sync", transparent_for=())
            row = self._net("row", n * b, kind="mem")
            phase_d = self._reg("phase_d", range(n))  # the phase of the call whose row is on the port
            m.d.comb += [port.addr.eq(address), row.eq(port.data)]
            m.d.sync += phase_d.eq(phase)
            fields = [row[b * k: b * (k + 1)] for k in range(n)]
            for s in range(n):  # slot s <- RNG (s + phase) mod n
                value = Signal(b, name=f"slot_{s}")
                with m.Switch(phase_d):
                    for r in range(n):
                        with m.Case(r):
                            m.d.comb += value.eq(fields[(s + r) % n])
                slots.append(value)
            key = fields[0]
        else:
            starts = models.lfsr_start_states(self.seed, n, b)
            walk = {k: [v & (period - 1) for v in models.debruijn_walk(b, starts[k])] for k in range(n)}
            index0, r0 = p0 % period, (p0 // (period - 1)) % n
            states = [self._reg(f"state_{s}", b, init=walk[(s + r0) % n][index0]) for s in range(n)]
            shadow = self._reg("shadow", b, init=walk[0][index0])  # the original first RNG, never rotated
            with m.If(self.step):
                m.d.sync += shadow.eq(_lfsr_next(shadow, b, 1, debruijn=True))
                for s in range(n):
                    source = Mux(rotate_next, states[(s + 1) % n], states[s])
                    m.d.sync += states[s].eq(_lfsr_next(source, b, 1, debruijn=True))
            slots, key = states, shadow
        table = Memory(shape=self.table_width, depth=period, init=self.table)
        m.submodules.scale_table = table
        tport = table.read_port(domain="sync", transparent_for=())
        t = self._net("scale", self.table_width, kind="mem")
        m.d.comb += [tport.addr.eq(key ^ (1 << (b - 1))), t.eq(tport.data)]  # value + 2^(b-1)
        raw = [self._reg(f"v_{s}", signed(b)) for s in range(n)]
        m.d.sync += [raw[s].eq(slots[s].as_signed()) for s in range(n)]
        m.d.comb += self.raw.eq(Cat(*raw))
        words = []
        for s in range(n):
            zs = self._reg(f"z_{s}", self.word_width)
            if self.fmt == "fixed":
                prod = Signal(signed(b + self.table_width + 2), name=f"prod_{s}")
                m.d.comb += prod.eq(raw[s] * Cat(t, Const(0, 1)).as_signed())
                m.d.sync += zs.eq(_saturate((prod + (1 << (self.shift - 1))) >> self.shift, self.word_width))
            else:
                m.d.sync += zs.eq(_float_product(m, raw[s], t, b, f"f{s}"))
            words.append(zs)
        m.d.comb += self.z.eq(Cat(*[words[i % n] for i in range(self.lanes)]))
        return m


class PeZOPreGeneration(Generator):
    """PeZO's pre-generation mode (``PeZORNGSampler(mode="pre-generation")``) as hardware: the pool of P
    words (zotune's ``pregeneration_pool``; ``fmt`` "fixed" quantises it, "float32" keeps its bits) in
    ``lanes`` ROM banks (word g in bank g mod lanes), and ``lanes`` consecutive words read per clock from
    the read position, with wrap-around. ``advance`` (0..lanes) moves the position on after each beat (a
    tensor of m values takes floor(m / lanes) full beats and one of m mod lanes), so the position carries
    from tensor to tensor as in the sampler. ``z`` shows pool[pos .. pos + lanes - 1] two clocks after
    the beat whose position is pos (the bank read, then the lanes' register)."""

    name = "pezo-pregen"

    def __init__(self, n: int = 31, bits: int = 12, pool_size: int | None = None, lanes: int | None = None,
                 fmt: str = "fixed", seed: int = 0, frac: int = 11, word_width: int = 16) -> None:
        self.n = _check_int("n", n, 1, 1024)
        self.bits = _check_int("bits", bits, 2, 16)
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
        lanes = n if lanes is None else lanes
        pool_size = n * (1 << bits) if pool_size is None else pool_size
        _check_int("pool_size", pool_size, 1)
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1 or pool_size % lanes:
            raise ValueError(f"pool_size ({pool_size}) must be a multiple of lanes ({lanes!r})")
        super().__init__(lanes, 32 if fmt == "float32" else word_width, 0 if fmt == "float32" else frac)
        self.fmt, self.seed, self.pool_size = fmt, seed, pool_size
        pool = pregeneration_pool(rng_permutations(seed, n, bits), pool_size).tolist()
        if fmt == "fixed":
            self.words = models.quantise(pool, frac, word_width)
        else:
            self.words = [models.f32_bits(x) for x in pool]
        self.depth = pool_size // lanes
        self.advance = Signal(range(lanes + 1), name="advance")
        self.latency = 2

    def ports(self) -> list[Signal]:
        return [self.advance, self.z]

    def params(self) -> dict[str, object]:
        return {**super().params(), "n": self.n, "bits": self.bits, "pool_size": self.pool_size, "fmt": self.fmt}

    def elaborate(self, platform) -> Module:
        m = Module()
        V, D = self.lanes, self.depth
        row = self._reg("row", range(D))  # position = row * V + col
        col = self._reg("col", range(V))
        col_sum = Signal(range(2 * V + 1), name="col_sum")
        m.d.comb += col_sum.eq(col + self.advance)
        wrap = col_sum >= V
        row_after = Mux(row == D - 1, 0, row + 1) if D > 1 else Const(0, 1)
        m.d.sync += [col.eq(Mux(wrap, col_sum - V, col_sum)), row.eq(Mux(wrap, row_after, row))]
        col_d = self._reg("col_d", range(V))  # the column of the beat whose words are on the ports
        m.d.sync += col_d.eq(col)
        banks = []
        for j in range(V):
            rom = Memory(shape=self.word_width, depth=D, init=self.words[j::V])
            m.submodules[f"bank_{j}"] = rom
            port = rom.read_port(domain="sync", transparent_for=())
            data = self._net(f"bank_{j}_data", self.word_width, kind="mem")
            # banks before col hold the beat's words in the next row
            m.d.comb += [port.addr.eq(Mux(j < col, row_after, row)), data.eq(port.data)]
            banks.append(data)
        words = []
        for i in range(V):  # lane i <- bank (col + i) mod V
            zl = self._reg(f"z_{i}", self.word_width)
            with m.Switch(col_d):
                for c in range(V):
                    with m.Case(c):
                        m.d.sync += zl.eq(banks[(c + i) % V])
            words.append(zl)
        m.d.comb += self.z.eq(Cat(*words))
        return m


__all__ = ["CLTGaussian", "FORMATS", "Generator", "ICDFGaussian", "PeZOOnTheFly", "PeZOPreGeneration", "SOURCES",
           "UniformAdaptive"]
