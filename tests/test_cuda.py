"""Checks that need a CUDA device (skipped without one; run on a GPU machine with
``python -m pytest -q tests/test_cuda.py tests/test_host_copies.py``)."""

from __future__ import annotations

import json

import pytest
import torch

import zotune
from fixtures.cli import CUSTOM_TASK as CUSTOM
from zotune.cli import main

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")



@pytest.mark.parametrize("name", ["gaussian", "uniform", "rademacher"])
def test_the_stream_on_cuda_is_the_stream_on_the_cpu(name):
    """Same integer words on both devices; the float transform may differ in the last bits."""
    sampler = zotune.make_sampler(name)
    for numel in (1, 7, 4096 + 3, (1 << 21) + 5):
        direction = zotune.Direction(3, 5, 0, numel)
        cpu = torch.zeros(numel)
        cuda = torch.zeros(numel, device="cuda")
        sampler.add_(cpu, direction, 1.0)
        sampler.add_(cuda, direction, 1.0)
        torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("peft", ["prefix", "lora", "full"])
def test_zotune_train_runs_on_cuda(tiny_dir, tmp_path, peft):
    out = tmp_path / "run"
    rc = main(["train", "--model", str(tiny_dir), *CUSTOM, "--peft", peft, "--device", "cuda", "--steps", "4",
               "--eval-every", "2", "--batch-size", "4", "--num-train", "5", "--num-dev", "3", "--num-eval", "3",
               "--lr", "1e-3", "--eps", "1e-2", "--out", str(out), "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == 4
    assert summary["peak_memory_mb"] > 0
