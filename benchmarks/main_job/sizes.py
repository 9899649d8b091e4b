"""The main job's footprint on disk: seed log against checkpoints, and a replay from the seed log alone.

    zotune train --out RUN --no-progress            # the main job (README), then:
    python benchmarks/main_job/sizes.py RUN > benchmarks/main_job/results/sizes.json

Prints the sizes of ``seeds.log``, the best checkpoint and the resumable checkpoint, rebuilds the best
step's weights with ``zotune replay`` and says whether they equal ``checkpoint/`` bit for bit.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    latest = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["dir"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "replayed"
        subprocess.run([sys.executable, "-m", "zotune", "replay", str(run), "--out", str(out), "--no-progress"],
                       check=True, stdout=subprocess.DEVNULL)
        best = load_file(str(run / "checkpoint" / "adapter_model.safetensors"))
        replayed = load_file(str(out / "adapter_model.safetensors"))
        equal = best.keys() == replayed.keys() and all(torch.equal(best[k], replayed[k]) for k in best)
    return {
        "run": str(run), "steps": summary["steps"], "method": summary["method"], "peft": summary["peft"],
        "trainable_params": summary["trainable_params"], "best_step": summary["best_step"],
        "test_accuracy": summary["final"]["test"]["accuracy"],
        "seed_log_bytes": (run / "seeds.log").stat().st_size,
        "seed_log_bytes_per_step": ((run / "seeds.log").stat().st_size
                                    - len((run / "seeds.log").read_bytes().split(b"\n", 1)[0]) - 1) / summary["steps"],
        "best_checkpoint_bytes": folder_bytes(run / "checkpoint"),
        "resume_checkpoint_bytes": folder_bytes(latest),
        "replay_of_best_step_equals_checkpoint": equal,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_model": _cpu_model(), "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=2))
