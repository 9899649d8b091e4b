"""Which machine instructions the compiled sampler kernels are made of, on this CPU.

    python benchmarks/rng/kernel_instructions.py > benchmarks/rng/results/kernel_instructions.<date>.json

Compiles the ``gaussian`` and ``uniform`` kernels in a fresh inductor cache folder that it creates and
removes, disassembles the shared objects inductor built (``objdump -d``) and counts the vector instructions
of the kernel's body by kind. The wider of the kernel's loops (the vectorised one) is what a pass spends its
time in; the counts cover the whole object, so the scalar tail loop adds its few scalar instructions too.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

KINDS = {
    "rotate": re.compile(r"^vpro[lr]v?d$"),
    "shift": re.compile(r"^vps(ll|rl|ra)v?d$"),
    "logic": re.compile(r"^vp(and|andn|or|xor|ternlog)[dq]?$"),
    "int add/sub": re.compile(r"^vp(add|sub)d$"),
    "int multiply": re.compile(r"^vpmul"),
    "float add/sub/mul": re.compile(r"^v(add|sub|mul)ps$"),
    "float fma": re.compile(r"^vf(n?)m(add|sub)"),
    "float div": re.compile(r"^vdivps$"),
    "float sqrt": re.compile(r"^vsqrtp[sd]$"),
    "int<->float": re.compile(r"^vcvt"),
    "compare/select": re.compile(r"^(vpcmp|vcmpps|vblend|vpblend|kand|kor|kmov)"),
    "load/store": re.compile(r"^vmov"),
}


def disassemble(folder: Path) -> tuple[collections.Counter, dict[str, int]]:
    """Mnemonic counts of every shared object under ``folder``, and how many instructions name zmm / ymm / xmm
    registers (512-, 256-, 128-bit vectors)."""
    counts: collections.Counter = collections.Counter()
    widths = {"zmm": 0, "ymm": 0, "xmm": 0}
    for so in folder.rglob("*.so"):
        text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(so)], capture_output=True, text=True,
                              check=True).stdout
        for line in text.splitlines():
            parts = line.split("\t")
            if len(parts) >= 2 and parts[1].strip():
                counts[parts[1].split()[0]] += 1
                for width in widths:
                    widths[width] += f"%{width}" in parts[1]
    return counts, widths


def main() -> dict:
    results: dict = {}
    for name in ("gaussian", "uniform"):
        cache = Path(tempfile.mkdtemp(prefix="zotune-inductor-isa-"))
        try:
            code = (f"import os; os.environ['TORCHINDUCTOR_CACHE_DIR'] = {str(cache)!r}\n"
                    "import torch\nfrom zotune.core.samplers import Direction, make_sampler\n"
                    f"make_sampler({name!r}, backend='compiled').add_(torch.zeros(4096), Direction(0, 1, 0, 0), 1.0)\n")
            subprocess.run([sys.executable, "-c", code], check=True,
                           env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)})
            counts, widths = disassemble(cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        by_kind = {kind: sum(n for op, n in counts.items() if pattern.match(op)) for kind, pattern in KINDS.items()}
        results[name] = {"by_kind": by_kind, "register_width": widths,
                         "vector_instructions": sum(n for op, n in counts.items() if op.startswith("v")),
                         "top": dict(counts.most_common(15))}
    import torch

    from zotune.bench.step import machine

    return {"benchmark": "kernel_instructions", "torch": torch.__version__, **machine(), "kernels": results}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
