"""Run a design in Amaranth's simulator: its output words per clock and its switching activity.

**Switching-activity proxy (not power).** Every register and named net a design lists in ``tracked`` is read
after each clock edge; a bit that changed counts one toggle. The rates

    alpha_reg = register-bit toggles / (register bits x clocks)
    alpha_net = net-bit toggles / (net bits x clocks)          (combinational nets, multiplier products)
    alpha_mem = memory read-data toggles / (read-data bits x clocks)
    alpha_logic = (register + net toggles) / ((register + net bits) x clocks)

are combined with a synthesised netlist's cell counts in :func:`power_proxy`:
(LUT + FF + DSP) x alpha_logic + BRAM x alpha_mem. That is a relative figure of
merit in "toggling cells per clock", with every LUT, flip-flop, DSP and block RAM weighted 1 and the
zero-delay simulation blind to glitches: it ranks designs by activity, it is **not** a power estimate and
is never reported in watts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from amaranth.sim import Simulator

from zotune.hw.designs import Generator


@dataclass
class SimResult:
    """``z[c]``: the design's lane words (unsigned) after c clock edges (c = 0: reset state); ``toggles`` and
    ``bits``: per kind ("reg", "net", "mem"), toggles summed over the measured clocks and bits tracked."""

    z: list[list[int]]
    extra: dict[str, list[int]] = field(default_factory=dict)
    toggles: dict[str, int] = field(default_factory=dict)
    bits: dict[str, int] = field(default_factory=dict)
    clocks: int = 0

    def rate(self, kind: str) -> float:
        """Mean toggles per bit and clock of one kind (0.0 when the design has none)."""
        bits = self.bits.get(kind, 0)
        return self.toggles.get(kind, 0) / (bits * self.clocks) if bits and self.clocks else 0.0

    def toggles_per_clock(self) -> float:
        """All tracked bits' toggles per clock (registers, nets and memory read data)."""
        return sum(self.toggles.values()) / self.clocks if self.clocks else 0.0


def split_words(value: int, lanes: int, width: int) -> list[int]:
    """A packed lane vector (lane 0 in the low bits) as a list of unsigned words."""
    mask = (1 << width) - 1
    return [(value >> (width * i)) & mask for i in range(lanes)]


def simulate(
    design: Generator,
    clocks: int,
    drive: Callable[[int], dict[str, int]] | None = None,
    activity: bool = False,
    warmup: int = 0,
    extra: tuple[str, ...] = (),
) -> SimResult:
    """Simulate ``clocks`` clock edges of ``design``.

    ``drive(c)`` returns the inputs (attribute name -> value, e.g. ``{"step": 1}``) applied before edge c.
    ``activity``: count toggles of the design's tracked signals over the edges after the first ``warmup``.
    ``extra``: further packed outputs to record (attribute names, e.g. ``("raw",)``), as integers.
    """
    if isinstance(clocks, bool) or not isinstance(clocks, int) or clocks < 1:
        raise ValueError(f"clocks must be an integer >= 1, got {clocks!r}")
    if not 0 <= warmup < clocks:
        raise ValueError(f"warmup must be in [0, clocks), got {warmup!r}")
    sim = Simulator(design)
    sim.add_clock(1e-8)
    result = SimResult(z=[], extra={name: [] for name in extra})
    lanes, width = design.lanes, design.word_width

    async def bench(ctx) -> None:
        tracked = design.tracked if activity else []
        previous = [ctx.get(sig) for sig, _ in tracked]
        widths = [len(sig) for sig, _ in tracked]
        masks = [(1 << w) - 1 for w in widths]
        toggles = {kind: 0 for _, kind in tracked}
        for (sig, kind), w in zip(tracked, widths):
            result.bits[kind] = result.bits.get(kind, 0) + w

        def record() -> None:
            result.z.append(split_words(ctx.get(design.z), lanes, width))
            for name in extra:
                result.extra[name].append(ctx.get(getattr(design, name)))

        record()
        for c in range(clocks):
            if drive is not None:
                for name, value in drive(c).items():
                    ctx.set(getattr(design, name), value)
            await ctx.tick()
            record()
            if tracked:
                for i, (sig, kind) in enumerate(tracked):
                    now = ctx.get(sig) & masks[i]
                    if c >= warmup:
                        toggles[kind] += bin(now ^ previous[i]).count("1")
                    previous[i] = now
        result.toggles = toggles

    sim.add_testbench(bench)
    sim.run()
    result.clocks = clocks - warmup if activity else 0
    return result


def logic_rate(result: SimResult) -> float:
    """Mean toggles per bit and clock over registers and nets together (alpha_logic)."""
    bits = result.bits.get("reg", 0) + result.bits.get("net", 0)
    toggles = result.toggles.get("reg", 0) + result.toggles.get("net", 0)
    return toggles / (bits * result.clocks) if bits and result.clocks else 0.0


def power_proxy(cells: dict[str, int], result: SimResult) -> float:
    """Switching-activity proxy in toggling cells per clock (a ranking figure, **not** watts):
    (LUT + FF + DSP) x alpha_logic + BRAM x alpha_mem, every cell weighted 1, LUT-based memories counted
    among the LUTs. ``cells`` holds "lut", "ff", "dsp" and "bram" counts (see :mod:`zotune.hw.synth`)."""
    logic = cells.get("lut", 0) + cells.get("ff", 0) + cells.get("dsp", 0)
    return logic * logic_rate(result) + cells.get("bram", 0) * result.rate("mem")


__all__ = ["SimResult", "logic_rate", "power_proxy", "simulate", "split_words"]
