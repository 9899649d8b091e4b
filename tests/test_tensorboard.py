"""``--tensorboard``: every metrics.jsonl record as TensorBoard scalars at its step, the same points after a
crash or a SIGKILL and a resume (none twice, none lost), and a one-line error without the package."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from zotune.cli import main
from zotune.train.config import TrainConfig
from zotune.train.loop import resume, train
from zotune.train.run_folder import inspect_folder

FIX = Path(__file__).parent / "fixtures"


def options(tiny_dir: Path, out: Path, **kw) -> dict:
    base = dict(model=str(tiny_dir), data=str(FIX / "custom" / "reviews.jsonl"), template="Review: {review}\nIt was",
                label_words="neg=terrible,pos=great", label_field="sentiment", steps=8, eval_every=2,
                checkpoint_every=3, num_train=6, num_dev=2, num_eval=2, batch_size=2, lr=1e-2, eps=1e-2,
                out=str(out), progress=False, zero_shot=False, threads=2, method="mezo", peft="lora",
                tensorboard=True)
    return {**base, **kw}


def tensorboard_points(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's event files as TensorBoard reads them (purges applied), tag -> (step, value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def metrics_points(run: Path, leave_out: tuple[str, ...] = ()) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl's numbers in the same shape, rounded to float32 as TensorBoard stores scalars; a
    non-finite value (null) reads as NaN."""
    points: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in record.items():
            if key == "step" or key in leave_out:
                continue
            number = math.nan if value is None else float(np.float32(value))
            points.setdefault(key, []).append((record["step"], number))
    return points


def same_points(a: dict[str, list[tuple[int, float]]], b: dict[str, list[tuple[int, float]]]) -> bool:
    def canonical(points: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float | str]]]:
        return {tag: [(step, "nan" if math.isnan(v) else v) for step, v in pts] for tag, pts in points.items()}

    return canonical(a) == canonical(b)


def without(points: dict[str, list[tuple[int, float]]], *tags: str) -> dict[str, list[tuple[int, float]]]:
    return {tag: pts for tag, pts in points.items() if tag not in tags}


def test_every_metrics_record_is_a_scalar_at_its_step(tiny_dir, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    train(TrainConfig.from_flat(**options(tiny_dir, run, zero_shot=True)))
    points = tensorboard_points(run)
    assert same_points(points, metrics_points(run))
    assert {"loss", "lr", "forward_passes", "wall_time", "dev_accuracy"} <= set(points)
    assert [step for step, _ in points["loss"]] == list(range(1, 9))
    assert [step for step, _ in points["dev_accuracy"]] == [0, 2, 4, 6, 8]  # step 0: the zero-shot model
    assert points["forward_passes"][-1] == (8, 16.0)
    assert inspect_folder(run).is_run  # the tensorboard folder is the run's own: --overwrite may replace it
    again = _write_config(tmp_path / "again.yaml", options(tiny_dir, run, steps=2))
    assert main(["train", "--config", str(again), "--overwrite"]) == 0
    assert [step for step, _ in tensorboard_points(run)["loss"]] == [1, 2]  # the old event file went with the old run


def test_without_the_flag_no_tensorboard_folder(tiny_dir, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig.from_flat(**options(tiny_dir, run, steps=2, tensorboard=False)))
    assert not (run / "tensorboard").exists()


def test_a_run_resumed_after_a_crash_has_each_point_once(tiny_dir, tmp_path, monkeypatch):
    """A crash at step 8 after the checkpoint at step 6: step 7 reached the event file, then metrics.jsonl is cut
    back to step 6 and the resumed run writes step 7 again; TensorBoard must show it once, and the whole run
    must show what an uninterrupted run logs."""
    pytest.importorskip("tensorboard")
    import zotune.train.runner as runner_module

    run, whole = tmp_path / "run", tmp_path / "whole"
    real_step = runner_module.Runner._one_step

    def crash_at_step_8(self):
        if self.state.step == 7:
            raise RuntimeError("the machine fell over")
        return real_step(self)

    monkeypatch.setattr(runner_module.Runner, "_one_step", crash_at_step_8)
    with pytest.raises(RuntimeError, match="fell over"):
        train(TrainConfig.from_flat(**options(tiny_dir, run, steps=10)))
    assert [step for step, _ in tensorboard_points(run)["loss"]] == [1, 2, 3, 4, 5, 6, 7]  # 7: after the checkpoint
    monkeypatch.setattr(runner_module.Runner, "_one_step", real_step)
    resume(run)
    points = tensorboard_points(run)
    assert same_points(points, metrics_points(run))
    assert [step for step, _ in points["loss"]] == list(range(1, 11))
    assert [step for step, _ in points["dev_accuracy"]] == [2, 4, 6, 8, 10]
    assert len(list((run / "tensorboard").iterdir())) == 2  # the resumed run's points are in a file of its own
    train(TrainConfig.from_flat(**options(tiny_dir, whole, steps=10)))
    assert same_points(without(points, "wall_time"), without(tensorboard_points(whole), "wall_time"))


def test_a_sigterm_then_resume_has_each_point_once(tiny_dir, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    import zotune.train.runner as runner_module

    run = tmp_path / "run"
    real_step = runner_module.Runner._one_step

    def step_then_signal(self):
        record = real_step(self)
        if self.state.step == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return record

    monkeypatch.setattr(runner_module.Runner, "_one_step", step_then_signal)
    assert main(["train", "--config", str(_write_config(tmp_path / "c.yaml", options(tiny_dir, run)))]) == 143
    assert [step for step, _ in tensorboard_points(run)["loss"]] == [1, 2, 3, 4, 5]
    monkeypatch.setattr(runner_module.Runner, "_one_step", real_step)
    assert main(["train", "--resume", str(run)]) == 0
    points = tensorboard_points(run)
    assert same_points(points, metrics_points(run))
    assert [step for step, _ in points["loss"]] == list(range(1, 9))


def _write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_sigkill_then_resume_loses_no_point_before_the_checkpoint(tiny_dir, tmp_path):
    """A run killed with SIGKILL (its event file never closed) after the checkpoint at step 20: the points up to
    the checkpoint were put on disk with it, the resumed run writes the rest, each once."""
    pytest.importorskip("tensorboard")
    steps, run = 60, tmp_path / "killed"
    config = _write_config(tmp_path / "killed.yaml", options(tiny_dir, run, steps=steps, eval_every=25,
                                                              checkpoint_every=10))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen([sys.executable, "-m", "zotune", "train", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        pointer = run / "checkpoints" / "latest.json"
        if pointer.is_file() and json.loads(pointer.read_text())["step"] >= 20:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    assert 20 <= stopped_at < steps
    assert [s for s, _ in tensorboard_points(run)["loss"]][:stopped_at] == list(range(1, stopped_at + 1))
    assert main(["train", "--resume", str(run)]) == 0
    points = tensorboard_points(run)
    assert same_points(points, metrics_points(run))
    assert [step for step, _ in points["loss"]] == list(range(1, steps + 1))


def test_tensorboard_without_the_package_is_one_line_before_the_model_loads(tiny_dir, tmp_path, monkeypatch, capsys):
    import zotune.train.loop as loop_module

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the missing package was reported")

    monkeypatch.setattr(loop_module, "load_model", must_not_load)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    run = tmp_path / "run"
    config = _write_config(tmp_path / "c.yaml", options(tiny_dir, run, tensorboard=False))
    assert main(["train", "--config", str(config), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tensorboard needs the tensorboard package" in err[0]
    assert "pip install 'zotune[tensorboard]'" in err[0]
    assert not run.exists()
