"""Runs that survive anything: checkpoints, SIGKILL and resume, signals, the seed log and replay, determinism,
and a checkpoint write that fails (a full disk) without losing the previous one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from zotune.cli import main
from zotune.train.checkpoint import latest_resume
from zotune.train.config import TrainConfig
from zotune.train.loop import resume, train

FIX = Path(__file__).parent / "fixtures"


def options(tiny_dir: Path, out: Path, **kw) -> dict:
    base = dict(model=str(tiny_dir), data=str(FIX / "custom" / "reviews.jsonl"), template="Review: {review}\nIt was",
                label_words="neg=terrible,pos=great", label_field="sentiment", steps=8, eval_every=3,
                checkpoint_every=2, num_train=6, num_dev=2, num_eval=2, batch_size=2, lr=1e-2, eps=1e-2,
                out=str(out), progress=False, zero_shot=False, threads=2, method="kerzoo", peft="lora")
    return {**base, **kw}


def metrics_without_time(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "wall_time"} for row in rows]


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_resume(run) / "trainable.safetensors"))


def assert_same_run(a: Path, b: Path) -> None:
    assert metrics_without_time(a) == metrics_without_time(b)
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (a / "seeds.log").read_bytes() == (b / "seeds.log").read_bytes()
    best_a, best_b = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    assert (best_a["best_step"], best_a["final"]) == (best_b["best_step"], best_b["final"])
    ca, cb = load_file(str(a / "checkpoint" / "adapter_model.safetensors")), load_file(str(b / "checkpoint" / "adapter_model.safetensors"))
    assert all(torch.equal(ca[k], cb[k]) for k in ca)


def test_same_config_and_seed_give_the_same_run(tiny_dir, tmp_path):
    train(TrainConfig.from_flat(**options(tiny_dir, tmp_path / "a")))
    train(TrainConfig.from_flat(**options(tiny_dir, tmp_path / "b")))
    assert_same_run(tmp_path / "a", tmp_path / "b")
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in final_state(tmp_path / "a").values())


def _write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tiny_dir, tmp_path):
    """A run in a subprocess is killed with SIGKILL (no chance to save) after its checkpoint at step 20, part
    way to the next one; --resume continues from that checkpoint and ends with the same weights, metrics,
    best checkpoint and seed log as a run that was never interrupted."""
    steps = 120
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    config = _write_config(tmp_path / "killed.yaml", options(tiny_dir, killed, steps=steps, eval_every=25,
                                                              checkpoint_every=10))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen([sys.executable, "-m", "zotune", "train", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        pointer = killed / "checkpoints" / "latest.json"
        if pointer.is_file() and json.loads(pointer.read_text())["step"] >= 20:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = json.loads((killed / "checkpoints" / "latest.json").read_text())["step"]
    assert 20 <= stopped_at < steps
    assert not (killed / "summary.json").exists()  # nothing was written after the kill

    assert main(["train", "--resume", str(killed), "--no-progress"]) == 0
    train(TrainConfig.from_flat(**options(tiny_dir, whole, steps=steps, eval_every=25, checkpoint_every=10)))
    assert_same_run(killed, whole)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == steps


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_says_interrupted_and_resume_finishes_the_run(tiny_dir, tmp_path, monkeypatch, signum, code,
                                                                     capsys):
    """SIGTERM / Ctrl-C: the current step finishes, a checkpoint is written, summary.json says `interrupted`
    with the steps done, the command to resume is printed, the exit status is 128 + the signal; resuming
    gives the uninterrupted run."""
    import zotune.train.runner as runner_module

    run, whole = tmp_path / "run", tmp_path / "whole"
    real_step = runner_module.Runner._one_step

    def step_then_signal(self):
        record = real_step(self)
        if self.state.step == 5:
            os.kill(os.getpid(), signum)
        return record

    monkeypatch.setattr(runner_module.Runner, "_one_step", step_then_signal)
    config = _write_config(tmp_path / "c.yaml", options(tiny_dir, run, checkpoint_every=4))
    assert main(["train", "--config", str(config)]) == code
    err = capsys.readouterr().err
    assert f"zotune train --resume {run}" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps_done"] == 5
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 5
    monkeypatch.setattr(runner_module.Runner, "_one_step", real_step)
    assert main(["train", "--config", str(config)]) == 2  # the same command again is refused, and says why
    assert f"continue it with `zotune train --resume {run}`" in capsys.readouterr().err
    resume(run)
    train(TrainConfig.from_flat(**options(tiny_dir, whole, checkpoint_every=4)))
    assert_same_run(run, whole)


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tiny_dir, tmp_path, monkeypatch):
    """The disk fills up while the checkpoint at step 4 is written: the run stops with a one-line error, the
    checkpoint of step 2 is intact and resumable, and resuming finishes the run as if nothing happened."""
    import errno

    import zotune.train.checkpoint as checkpoint_module

    run, whole = tmp_path / "run", tmp_path / "whole"
    real_save = checkpoint_module.torch.save
    calls = {"n": 0}

    def full_disk(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: step 4
            real_save(obj, path, *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    config = _write_config(tmp_path / "c.yaml", options(tiny_dir, run))
    assert main(["train", "--config", str(config)]) == 1
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert [p.name for p in (run / "checkpoints").iterdir() if p.is_dir()] == ["step-00000002"]  # no debris
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    resume(run)
    train(TrainConfig.from_flat(**options(tiny_dir, whole)))
    assert_same_run(run, whole)


def test_replay_rebuilds_the_weights_from_the_seed_log_alone(tiny_dir, tmp_path):
    """`zotune replay` (base model + config + seeds.log, no data) gives the best checkpoint's weights and the
    last step's weights bit for bit."""
    run = tmp_path / "run"
    summary = train(TrainConfig.from_flat(**options(tiny_dir, run, steps=6, eval_every=2)))
    log_bytes = (run / "seeds.log").stat().st_size
    assert summary["seed_log_bytes"] == log_bytes
    assert main(["replay", str(run), "--out", str(tmp_path / "best"), "--no-progress"]) == 0
    best, replayed = load_file(str(run / "checkpoint" / "adapter_model.safetensors")), \
        load_file(str(tmp_path / "best" / "adapter_model.safetensors"))
    assert best.keys() == replayed.keys() and all(torch.equal(best[k], replayed[k]) for k in best)
    meta = json.loads((tmp_path / "best" / "zotune_checkpoint.json").read_text())
    assert meta["step"] == summary["best_step"]
    assert main(["replay", str(run), "--out", str(tmp_path / "last"), "--step", "last", "--no-progress"]) == 0
    trained = final_state(run)
    from zotune.llm.models import load_model
    from zotune.train.checkpoint import load_checkpoint

    model = load_checkpoint(load_model(str(tiny_dir)).model, tmp_path / "last")
    rebuilt = {n: p for n, p in model.named_parameters() if "lora" in n}
    assert rebuilt.keys() == trained.keys() and all(torch.equal(rebuilt[k], trained[k]) for k in trained)
    assert any(not torch.equal(best[k], replayed[k] * 0) for k in best)


def test_replay_refuses_what_it_cannot_rebuild_or_would_overwrite(tiny_dir, tmp_path, capsys):
    run = tmp_path / "run"
    train(TrainConfig.from_flat(**options(tiny_dir, run, steps=2, eval_every=0, method="mezo")))
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "mine.txt").write_text("keep me")
    assert main(["replay", str(run), "--out", str(taken)]) == 2
    assert "not empty" in capsys.readouterr().err and (taken / "mine.txt").read_text() == "keep me"
    assert main(["replay", str(run), "--out", str(tmp_path / "x"), "--step", "9"]) == 2
    assert "the seed log holds steps 0 to 2" in capsys.readouterr().err
    dizo = tmp_path / "dizo"
    train(TrainConfig.from_flat(**options(tiny_dir, dizo, steps=2, eval_every=0, method="dizo", peft="full",
                                          method_options={"interval": 1})))
    assert main(["replay", str(dizo), "--out", str(tmp_path / "y")]) == 2
    assert "cannot replay this run: DiZOProjection" in capsys.readouterr().err
