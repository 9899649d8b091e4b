"""`--device-map`: a model spread over devices by accelerate trains with the optimizer unchanged. This machine
has one device, so "auto" places every layer on the CPU through accelerate's dispatch; the run must equal
the one without it, and the combination with data parallelism is refused before anything loads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from fixtures.cli import CUSTOM_TASK as CUSTOM
from zotune.cli import main
from zotune.train.checkpoint import latest_resume



def args(tiny_dir: Path, out: Path) -> list[str]:
    return ["train", "--model", str(tiny_dir), *CUSTOM, "--peft", "full", "--steps", "3", "--eval-every", "0",
            "--batch-size", "3", "--num-train", "5", "--num-dev", "3", "--num-eval", "3", "--lr", "1e-3",
            "--eps", "1e-2", "--out", str(out), "--no-progress"]


def test_a_dispatched_model_trains_as_the_plain_one(tiny_dir, tmp_path):
    plain, spread = tmp_path / "plain", tmp_path / "spread"
    assert main(args(tiny_dir, plain)) == 0
    assert main([*args(tiny_dir, spread), "--device-map", "auto"]) == 0
    a = load_file(str(latest_resume(plain) / "trainable.safetensors"))
    b = load_file(str(latest_resume(spread) / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    config = (spread / "config.yaml").read_text()
    assert "device_map: auto" in config
    assert json.loads((spread / "summary.json").read_text())["status"] == "completed"


def test_device_map_with_nproc_is_refused_before_launching(tiny_dir, tmp_path, capsys):
    assert main([*args(tiny_dir, tmp_path / "r"), "--device-map", "auto", "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "use one or the other" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
