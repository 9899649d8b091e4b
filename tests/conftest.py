"""Shared test settings: few threads (CI machines have 2 cores) and deterministic algorithms."""

import torch

torch.set_num_threads(2)
