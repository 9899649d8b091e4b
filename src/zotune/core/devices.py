"""What differs between devices that the algorithms must know about."""

from __future__ import annotations

import torch

__all__ = ["wide_float"]


def wide_float(device: torch.device | str) -> torch.dtype:
    """The widest float a device computes in: float64, except on Apple's MPS, which has none (float32 there;
    sums and ratios then carry float32 rounding)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64
