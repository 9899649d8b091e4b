"""`zotune train`, `zotune eval`, `zotune tasks` and `zotune models` on a tiny local model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.tiny import save_tiny
from zotune.cli import main

FIX = Path(__file__).parent / "fixtures"
CUSTOM = ["--data", str(FIX / "custom" / "reviews.csv"), "--template", "{review} It was",
          "--label-words", "neg=terrible,pos=great", "--label-field", "sentiment"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "gpt2", arch="gpt2")


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_train_then_eval_checkpoint(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", str(tiny_dir), *CUSTOM, "--steps", "3", "--eval-every", "2", "--batch-size", "2",
               "--num-train", "6", "--num-dev", "2", "--num-eval", "2", "--lr", "1e-3", "--eps", "1e-2",
               "--seed", "1", "--out", str(out), "--no-progress"])
    assert rc == 0
    result = last_json(capsys.readouterr().out)
    assert result["run_folder"] == str(out) and result["forward_passes"] == 6 and result["metric"] == "accuracy"
    assert 0.0 <= result["fine_tuned_test"] <= 1.0 and result["zero_shot_test"] is not None
    rc = main(["eval", "--checkpoint", str(out), *CUSTOM, "--num-eval", "2", "--seed", "1"])
    assert rc == 0
    evaluated = last_json(capsys.readouterr().out)
    assert evaluated["accuracy"] == result["fine_tuned_test"] and evaluated["model"] == str(tiny_dir)


def test_train_with_config_file_and_override(tiny_dir, tmp_path, capsys):
    config = tmp_path / "cfg.yaml"
    config.write_text(f"model: {tiny_dir}\npeft: prefix\nsteps: 5\nnum_train: 4\nnum_dev: 2\nnum_eval: 2\n"
                      f"batch_size: 2\nprogress: false\nzero_shot: false\nout: {tmp_path / 'cfg-run'}\n")
    assert main(["train", "--config", str(config), *CUSTOM, "--steps", "2"]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["steps"] == 2 and result["zero_shot_test"] is None
    resolved = (tmp_path / "cfg-run" / "config.yaml").read_text()
    assert "peft: prefix" in resolved and "steps: 2" in resolved


def test_zero_shot_eval_of_hub_schema_task_and_scoring_measurement(tiny_dir, capsys):
    rc = main(["eval", "--model", str(tiny_dir), "--task", "sst2", "--data-dir", str(FIX / "tasks" / "sst2"),
               "--num-eval", "4", "--measure-scoring"])
    assert rc == 0
    result = last_json(capsys.readouterr().out)
    assert result["task"] == "sst2" and result["n"] == 4 and 0.0 <= result["accuracy"] <= 1.0
    assert result["scoring"]["candidate_only_s"] > 0 and result["scoring"]["full_vocab_logits_s"] > 0


@pytest.mark.parametrize("argv,message", [
    (["train", "--task", "nope"], "unknown task 'nope'; known tasks: bbc, boolq"),
    (["train", "--model", "nope-model", "--task", "sst2", "--data-dir", str(FIX / "tasks" / "sst2")],
     "unknown model 'nope-model'"),
    (["train", "--data", str(FIX / "custom" / "missing.jsonl"), "--template", "{x}", "--label-words", "a,b"],
     "data file not found"),
    (["train", "--config", "/nonexistent/cfg.toml"], "config file not found"),
    (["eval", "--checkpoint", "/nonexistent/run"], "checkpoint folder not found"),
    (["train", "--peft", "adapter"], "unknown peft 'adapter'; use one of full, lora, prefix"),
])
def test_errors_are_one_clear_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x")] if argv[0] == "train" else argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_bad_data_line_is_named(tmp_path, capsys):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"t": "good", "y": "1"}\n{"t": "bad", "y": "7"}\n')
    rc = main(["train", "--data", str(bad), "--template", "{t}", "--label-words", "no,yes", "--label-field", "y",
               "--out", str(tmp_path / "run")])
    assert rc == 2
    assert "d.jsonl line 2: label '7' is not among the candidates" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_tasks_and_models_listings(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("sst2", "rte", "cb", "boolq", "wsc", "wic", "multirc", "copa", "record", "squad", "drop", "mr", "bbc", "piqa"):
        assert f"\n{name} " in out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m" in out and "gemma3-270m" in out


@pytest.mark.parametrize("method, passes_per_step", [("kerzoo", 6), ("pezo", 2), ("momentum", 2), ("zo-adam", 2)])
def test_train_runs_every_new_method_at_its_defaults(method, passes_per_step, tiny_dir, tmp_path, capsys):
    """`--method` takes the authors' KerZOO (6 forward passes a step: three queries) and PeZO, momentum
    and ZO-Adam, with their own defaults (no method option given)."""
    out = tmp_path / method
    rc = main(["train", "--model", str(tiny_dir), *CUSTOM, "--method", method, "--steps", "2", "--eval-every", "0",
               "--batch-size", "2", "--num-train", "6", "--num-dev", "2", "--num-eval", "2", "--lr", "1e-4",
               "--eps", "1e-2", "--no-zero-shot", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    result = last_json(capsys.readouterr().out)
    assert result["forward_passes"] == 2 * passes_per_step
