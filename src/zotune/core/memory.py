"""Peak memory of a workload, not of the whole process.

``ru_maxrss`` is the high-water mark since the process started, so in a process that runs several jobs (a study
runner, a notebook) every job after the first reports the largest peak so far. On Linux the mark can be reset
(``/proc/self/clear_refs``, value 5) and read back as ``VmHWM``; on CUDA, ``torch.cuda.reset_peak_memory_stats``
does the same for ``max_memory_allocated``. Resetting changes only this accounting, nothing the process holds.
The reset starts from the RSS of that moment, so what an earlier job left resident (heap pages glibc keeps after
a free, objects not yet collected) still counts: a clean figure needs a process per job, as the cost and step
benchmarks run their memory modes.
"""

from __future__ import annotations

import resource

import torch


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS to its current RSS (Linux only); False where
    it cannot be reset (then ``peak_rss_mb`` is the peak since the process started).

    Building a model with random initialisation peaks above what the model then holds; resetting after
    the build makes the peak that of the workload (weights included, construction transients not).
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS since the last reset (VmHWM), else since the process started (ru_maxrss), in MiB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def reset_peak_memory(device: torch.device) -> bool:
    """Start counting ``device``'s peak memory from now: True if the count is reset, False if it cannot be
    (a CPU without ``/proc/self/clear_refs``: the peak is then the process's since it started)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    return reset_peak_rss()


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since ``reset_peak_memory``: CUDA's max allocated on a GPU, the RSS high-water mark on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()
