"""`zotune train --nproc 2`: two gloo ranks on loopback train what one process trains, rank 0 writes the
run folder alone, and an interrupted run resumes on two ranks."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fixtures.tiny import save_tiny
from fixtures.cli import CUSTOM_TASK as CUSTOM
from zotune.cli import main
from zotune.train.checkpoint import latest_resume



@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "gpt2", arch="gpt2")


def run_args(tiny_dir: Path, out: Path, steps: int = 4) -> list[str]:
    # the fixture has 8 rows: 5 to train on, 3 for dev (shards of 2 and 1, which the weighted combination
    # must handle); a batch of 3 is split 2 + 1 too
    return ["train", "--model", str(tiny_dir), *CUSTOM, "--steps", str(steps), "--eval-every", "2",
            "--batch-size", "3", "--num-train", "5", "--num-dev", "3", "--num-eval", "3", "--lr", "1e-3",
            "--eps", "1e-2", "--seed", "3", "--out", str(out), "--no-progress", "--threads", "1"]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_resume(run) / "trainable.safetensors"))


def losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


def assert_same_training(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        # the ranks' mean of shard losses equals the batch loss up to float rounding (float32 forwards)
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-6)
    assert losses(a) == pytest.approx(losses(b), rel=1e-5)


def test_two_ranks_train_what_one_process_trains(tiny_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(run_args(tiny_dir, one)) == 0
    assert main([*run_args(tiny_dir, two), "--nproc", "2"]) == 0
    assert_same_training(one, two)
    s1, s2 = (json.loads((run / "summary.json").read_text()) for run in (one, two))
    assert s2["status"] == "completed" and s2["world_size"] == 2 and s1["world_size"] == 1
    assert s2["forward_passes"] == s1["forward_passes"] == 8
    assert s2["final"]["test"]["accuracy"] == pytest.approx(s1["final"]["test"]["accuracy"])
    assert s2["final"]["test"]["n"] == s1["final"]["test"]["n"]
    assert s2["zero_shot"]["dev"]["n"] == s1["zero_shot"]["dev"]["n"] == 3
    # per step: two probe losses and the stop agreement, 16 bytes each; evaluations add a few per metric
    assert s2["bytes_exchanged"] / s2["steps"] < 200, s2["bytes_exchanged"]
    # rank 0 wrote the run folder; no other rank wrote into it
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_an_interrupted_run_resumes_on_two_ranks(tiny_dir, tmp_path, monkeypatch):
    from zotune.train import runner as runner_module

    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(run_args(tiny_dir, whole, steps=6)) == 0
    original = runner_module.Runner._one_step

    def step_then_signal(self):
        record = original(self)
        if self.state.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return record

    monkeypatch.setattr(runner_module.Runner, "_one_step", step_then_signal)
    assert main(run_args(tiny_dir, stopped, steps=6)) == 143
    monkeypatch.setattr(runner_module.Runner, "_one_step", original)
    assert json.loads((latest_resume(stopped) / "state.json").read_text())["step"] == 3
    assert main(["train", "--resume", str(stopped), "--nproc", "2", "--no-progress"]) == 0
    assert_same_training(stopped, whole)


def test_nproc_checks_before_launching(tiny_dir, tmp_path, monkeypatch, capsys):
    import subprocess

    def no_launch(*args, **kwargs):
        raise AssertionError("torchrun was launched for a job that cannot run")

    monkeypatch.setattr(subprocess, "run", no_launch)
    assert main([*run_args(tiny_dir, tmp_path / "r"), "--nproc", "0"]) == 2
    assert "--nproc must be >= 1" in capsys.readouterr().err
    assert main(["train", "--task", "nope", "--nproc", "2"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    assert main([*run_args(tiny_dir, existing), "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (existing / "notes.txt").read_text() == "mine"
