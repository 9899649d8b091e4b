"""Stopping a run whose training loss diverges (``--stop-loss-ratio``), and the convergence study's use of it:
grid runs stop there and count as diverged, finished runs the rule would have stopped count so too."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

import zotune.train.runner as runner_module
from zotune.bench.convergence import ConvergenceConfig, RunKey, _train_config, choose_lr, loss_diverged, summarize
from zotune.bench.report import convergence_tables
from zotune.cli import main
from zotune.llm.objectives import Scorer
from zotune.train.config import TrainConfig
from zotune.train.loop import TrainingDiverged, resume, train
from zotune.train.runner import loss_divergence, loss_window_size

FIX = Path(__file__).parent / "fixtures"


def test_the_rule_compares_the_latest_tenth_with_the_first_window():
    healthy = [1.2] + [0.9] * 40 + [0.6] * 59
    assert loss_divergence(healthy, 1.5) is None
    rising = [1.0] * 30 + [3.0] * 70  # the mean of windows 24..33 is (7 * 1 + 3 * 3) / 10 = 1.6 > 1.5
    assert loss_divergence(rising, 1.5) == 33
    assert loss_divergence(rising, 2.0) == 36  # at 35: (5 + 15) / 10 = 2.0 is not above 2, so one more window
    assert loss_divergence([3.0] * 9, 1.5) is None  # fewer than a tenth of the windows: never judged
    assert loss_divergence([None] + [5.0] * 20, 1.5) is None  # no first window to compare with
    with_gaps = [1.0] + [None] * 8 + [2.5]  # windows without a finite loss are left out: (1 + 2.5) / 2 > 1.5
    assert loss_divergence(with_gaps, 1.5) == 10
    assert loss_divergence([], 1.5) is None
    assert loss_window_size(1000) == 10 and loss_window_size(330) == 4 and loss_window_size(7) == 1


def options(tiny_dir: Path, out: Path, **kw) -> dict:
    base = {"model": str(tiny_dir), "data": str(FIX / "custom" / "reviews.jsonl"),
            "template": "Review: {review}\nIt was", "label_words": "neg=terrible,pos=great", "label_field": "sentiment",
            "steps": 100, "eval_every": 25, "checkpoint_every": 10, "num_train": 6, "num_dev": 2, "num_eval": 2,
            "batch_size": 2, "lr": 1e-2, "eps": 1e-2, "out": str(out), "progress": False, "zero_shot": False,
            "threads": 1, "method": "mezo", "peft": "lora"}
    return {**base, **kw}


@pytest.fixture
def loss_jumps_after_step_30(monkeypatch):
    """Every probe loss is 1.0 up to step 30 and 3.0 after it (a run that blows up), keyed by the step under
    way so that a resumed run sees the same losses."""
    under_way = {"step": 0}
    real_step = runner_module.Runner._one_step

    def one_step(self):
        under_way["step"] = self.state.step + 1
        return real_step(self)

    def loss(self, batch, objective, max_new_tokens=50):
        return torch.tensor(1.0 if under_way["step"] <= 30 else 3.0)

    monkeypatch.setattr(runner_module.Runner, "_one_step", one_step)
    monkeypatch.setattr(Scorer, "loss", loss)
    return one_step


def steps_logged(run: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_a_run_whose_loss_blows_up_stops_as_diverged(tiny_dir, tmp_path, loss_jumps_after_step_30):
    with pytest.raises(TrainingDiverged, match=r"training loss diverged: 1.6 over the last 10 of 100 windows, "
                                               r"above 1.5x the first window's 1 \(step 33\)"):
        train(TrainConfig.from_flat(**options(tiny_dir, tmp_path / "stopped", stop_loss_ratio=1.5)))
    assert steps_logged(tmp_path / "stopped") == list(range(1, 34))
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert summary["status"] == "diverged" and "training loss diverged" in summary["error"]
    assert (tmp_path / "stopped" / "checkpoint").exists()  # the best checkpoint stays
    train(TrainConfig.from_flat(**options(tiny_dir, tmp_path / "whole")))  # without the option: to the end
    assert steps_logged(tmp_path / "whole") == list(range(1, 101))


def test_a_resumed_run_stops_at_the_same_step(tiny_dir, tmp_path, monkeypatch, loss_jumps_after_step_30):
    """The loss windows are in the checkpoint: interrupted at step 20 and resumed, the run stops at step 33
    with the same records as a run never interrupted."""
    def step_then_signal(self):
        record = loss_jumps_after_step_30(self)
        if self.state.step == 20:
            os.kill(os.getpid(), signal.SIGTERM)
        return record

    run = tmp_path / "run"
    monkeypatch.setattr(runner_module.Runner, "_one_step", step_then_signal)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(options(tiny_dir, run, stop_loss_ratio=1.5)))
    assert main(["train", "--config", str(config)]) == 143
    monkeypatch.setattr(runner_module.Runner, "_one_step", loss_jumps_after_step_30)
    with pytest.raises(TrainingDiverged, match=r"\(step 33\)"):
        resume(run)
    with pytest.raises(TrainingDiverged, match=r"\(step 33\)"):
        train(TrainConfig.from_flat(**options(tiny_dir, tmp_path / "whole", stop_loss_ratio=1.5)))
    strip = [{k: v for k, v in json.loads(line).items() if k != "wall_time"}
             for line in (run / "metrics.jsonl").read_text().splitlines()]
    whole = [{k: v for k, v in json.loads(line).items() if k != "wall_time"}
             for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert strip == whole and steps_logged(run) == list(range(1, 34))


def test_the_flag_is_checked_before_anything_loads(capsys):
    assert main(["train", "--stop-loss-ratio", "0.5", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "stop_loss_ratio" in err.replace("-", "_") and "Traceback" not in err


# --- the study ----------------------------------------------------------------------------------------


def study(**kw) -> ConvergenceConfig:
    base = {"methods": ["mezo"], "lr_grid": {"mezo": [1e-5, 3e-5, 1e-4]}, "grid_seeds": [0], "seeds": [0, 1],
            "steps": 100, "eval_every": 50, "grid_stop_loss_ratio": 1.5}
    return ConvergenceConfig(**{**base, **kw})


def record(lr: float, best: float, losses: list[float], seed: int = 0) -> dict:
    return {"method": "mezo", "lr": lr, "seed": seed, "status": "completed", "metric": "accuracy", "best_dev": best,
            "curve": [{"step": 50, "forward_passes": 100, "dev": best, "wall_time": 1.0},
                      {"step": 100, "forward_passes": 200, "dev": best, "wall_time": 2.0}],
            "loss_curve": [{"step": i + 1, "forward_passes": 2 * (i + 1), "loss": v} for i, v in enumerate(losses)],
            "test": 0.7, "forward_passes": 200, "wall_seconds": 3.0}


def test_a_finished_run_the_rule_would_have_stopped_counts_as_diverged():
    """MeZO at 1e-4 on mr peaked early (dev 0.776 at step 100) and then its loss doubled: with the rule it
    cannot be kept, whatever its early best."""
    falling, blown = [1.1] + [0.7] * 99, [1.0] * 40 + [2.2] * 60
    records = [record(1e-5, 0.70, falling), record(3e-5, 0.75, falling), record(1e-4, 0.80, blown)]
    cfg = study()
    assert loss_diverged(cfg, records[2]) and not loss_diverged(cfg, records[1])
    assert choose_lr(cfg, records, "mezo") == 3e-5
    assert choose_lr(study(grid_stop_loss_ratio=None), records, "mezo") == 1e-4  # without it, the early peak wins
    table = convergence_tables(summarize(cfg, records), cfg, records)
    assert "0.0001: 0.800 (loss diverged)" in table and "3e-05: 0.750*" in table


def test_only_grid_runs_get_the_stop(tmp_path):
    cfg = study()
    grid_run = _train_config(cfg, RunKey("mezo", 3e-5, 0), tmp_path / "a", zero_shot=True)
    final_run = _train_config(cfg, RunKey("mezo", 3e-5, 1), tmp_path / "b", zero_shot=True)
    assert grid_run.run.stop_loss_ratio == 1.5 and final_run.run.stop_loss_ratio is None
    assert _train_config(study(grid_stop_loss_ratio=None), RunKey("mezo", 3e-5, 0), tmp_path / "c", True).run.stop_loss_ratio is None


def test_the_rule_needs_its_100_windows():
    with pytest.raises(ValueError, match="grid_stop_loss_ratio must be >= 1 and needs loss_points = 100"):
        study(loss_points=50)
    with pytest.raises(ValueError, match="grid_stop_loss_ratio must be >= 1"):
        study(grid_stop_loss_ratio=0.5)
    assert math.isclose(study().grid_stop_loss_ratio, 1.5)


def test_the_study_records_why_a_grid_run_stopped_without_its_temporary_checkpoint(tiny_dir, tmp_path,
                                                                                   loss_jumps_after_step_30):
    """The runner's run folders are deleted with it, so a diverged line keeps the reason and step, not a path
    to a checkpoint that no longer exists; the exception itself still names it for `zotune train`."""
    from zotune.bench.convergence import run_one

    custom = {k: v for k, v in options(tiny_dir, tmp_path).items()
              if k in ("data", "template", "label_words", "label_field")}
    cfg = study(task="custom", model=str(tiny_dir), peft="lora", lr_grid={"mezo": [1e-2]}, eps=1e-2, seeds=[0],
                batch_size=2, num_train=6, num_dev=2, num_eval=2, train_options=custom, threads=1)
    line = run_one(cfg, RunKey("mezo", 1e-2, 0), zero_shot=False, workdir=tmp_path / "work")
    assert line["status"] == "diverged"
    assert line["error"] == ("training loss diverged: 1.6 over the last 10 of 100 windows, above 1.5x the first "
                             "window's 1 (step 33); stopped (the runner keeps no checkpoints)")


def test_a_diverged_error_survives_pickling_with_its_parts(tmp_path):
    import pickle

    error = TrainingDiverged("3 non-finite losses in a row (step 9)", "Try a smaller --lr.", tmp_path / "checkpoint")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.reason == error.reason and copy.checkpoint == error.checkpoint
    assert str(error).endswith(f"; stopped. Try a smaller --lr. The best checkpoint is in {tmp_path / 'checkpoint'}")
