"""Bad input: a one-line error, a non-zero exit, no traceback, nothing lost, and found before the model loads;
`--overwrite` replaces only a zotune run; `--help` shows every default; `zotune eval` reuses a run's data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zotune.cli import main
from zotune.train.config import config_fields, load_config_file, resolve_config

FIX = Path(__file__).parent / "fixtures"
CUSTOM = ["--data", str(FIX / "custom" / "reviews.jsonl"), "--template", "Review: {review}\nIt was",
          "--label-words", "neg=terrible,pos=great", "--label-field", "sentiment"]
SMALL = ["--steps", "2", "--eval-every", "0", "--batch-size", "2", "--num-train", "4", "--num-dev", "2",
         "--num-eval", "2", "--no-progress", "--no-zero-shot", "--lr", "1e-2", "--eps", "1e-2"]


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fails the test if the model is loaded: the error must come first."""
    import zotune.train.loop as loop

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was reported")

    monkeypatch.setattr(loop, "load_model", refuse)


def one_line_error(capsys, expected: str, *, after_model_load: bool = False) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    if after_model_load:  # the model's loading bar came first
        lines = [line for line in lines if "Loading weights" not in line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert expected in err, err
    return err


@pytest.mark.parametrize("argv,expected", [
    (["--method", "kerzoo+sgd"], "unknown method 'sgd'; available methods: mezo, dizo"),
    (["--device", "gpu"], "unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
    (["--threads", "-1"], "threads must be a positive integer, got -1"),
    (["--steps", "ten"], "steps must be an integer, got 'ten'"),
    (["--lr", "fast"], "lr must be a number, got 'fast'"),
    (["--dtype", "float8"], "unknown dtype 'float8'; use one of float32, bfloat16, float16"),
    (["--steps", "0", "--no-zero-shot"], "nothing to do"),
])
def test_bad_flags_are_one_line_before_the_model_loads(tiny_dir, tmp_path, capsys, no_model_loading, argv, expected):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_dir), *CUSTOM, "--out", str(out), *argv]) == 2
    one_line_error(capsys, expected)
    assert not out.exists()


def test_cuda_on_a_machine_without_it_is_refused_before_the_model_loads(tiny_dir, tmp_path, capsys, no_model_loading,
                                                                        monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "--model", str(tiny_dir), *CUSTOM, "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    one_line_error(capsys, "CUDA is not available on this machine")


def test_yaml_numbers_written_without_a_dot_are_read_as_numbers(tmp_path):
    """PyYAML reads `lr: 1e-3` as the string '1e-3' (YAML 1.1 wants a dot); zotune converts it, inside
    method_options too, and refuses a value that is not a number, naming the key."""
    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-3\neps: 1e-2\nsteps: '20'\nmethod_options:\n  kerzoo:\n    clip_norm: 4e5\n"
                      "    sampler_name: gaussian\n")
    raw = load_config_file(config)
    assert raw["lr"] == "1e-3"  # what the YAML parser gives
    cfg = resolve_config(raw)
    assert (cfg.method.lr, cfg.method.eps, cfg.run.steps) == (1e-3, 1e-2, 20)
    assert cfg.method.options == {"kerzoo": {"clip_norm": 4e5, "sampler_name": "gaussian"}}
    config.write_text("lr: 1e-3x\n")
    with pytest.raises(ValueError, match="lr must be a number, got '1e-3x'"):
        resolve_config(load_config_file(config))


def test_sectioned_config_files_and_keys_in_the_wrong_section(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[model]\npeft = "lora"\n[run]\nsteps = 7\n[method]\nmethod = "kerzoo"\nlr = 1e-4\n')
    cfg = resolve_config(load_config_file(config))
    assert (cfg.model.peft, cfg.run.steps, cfg.method.name, cfg.method.lr) == ("lora", 7, "kerzoo", 1e-4)
    config.write_text('[run]\npeft = "lora"\n')
    with pytest.raises(ValueError, match=r"peft belongs in \[model\], not \[run\]"):
        load_config_file(config)


def test_out_that_is_a_file_or_under_a_file_is_refused(tiny_dir, tmp_path, capsys, no_model_loading):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert main(["train", "--model", str(tiny_dir), *CUSTOM, "--out", str(target)]) == 2
    one_line_error(capsys, "is a file, not a folder")
    assert main(["train", "--model", str(tiny_dir), *CUSTOM, "--out", str(target / "run")]) == 2
    one_line_error(capsys, "is a file, not a folder")
    assert target.read_text() == "mine"


def test_overwrite_replaces_only_a_zotune_run(tiny_dir, tmp_path, capsys):
    """`--out . --overwrite` in a project must not wipe it: a folder with anything a run does not write is
    refused even with --overwrite; a zotune run is replaced, and nothing of the old run remains."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("my code")
    assert main(["train", "--model", str(tiny_dir), *CUSTOM, *SMALL, "--out", str(project), "--overwrite"]) == 2
    one_line_error(capsys, "is not a zotune run folder (it holds train.py); --overwrite only replaces zotune runs")
    assert (project / "train.py").read_text() == "my code"

    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_dir), *CUSTOM, *SMALL, "--out", str(run)]) == 0
    capsys.readouterr()
    (run / "checkpoints" / "step-00000099").mkdir()  # debris a run would write, from an older run
    assert main(["train", "--model", str(tiny_dir), *CUSTOM, *SMALL, "--out", str(run), "--overwrite",
                 "--steps", "1"]) == 0
    capsys.readouterr()
    assert json.loads((run / "summary.json").read_text())["steps_done"] == 1
    assert not (run / "checkpoints" / "step-00000099").exists()
    (run / "my-notes.md").write_text("notes")  # the user's file inside a run folder
    assert main(["train", "--model", str(tiny_dir), *CUSTOM, *SMALL, "--out", str(run), "--overwrite"]) == 2
    one_line_error(capsys, "my-notes.md")
    assert (run / "my-notes.md").read_text() == "notes" and (run / "summary.json").is_file()


def test_steps_zero_evaluates_the_zero_shot_model_and_says_so(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_dir), *CUSTOM, "--steps", "0", "--num-dev", "2", "--num-eval", "2",
                 "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "--steps 0: the zero-shot model was evaluated; nothing trained" in captured.err
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["status"] == "evaluated" and result["fine_tuned_test"] is None and result["zero_shot_test"] is not None
    assert not (out / "checkpoint").exists()


def test_half_precision_with_an_eps_below_the_weights_resolution_is_refused(tiny_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_dir), *CUSTOM, *SMALL, "--dtype", "bfloat16", "--eps", "1e-7",
                 "--peft", "full", "--out", str(out)]) == 2
    one_line_error(capsys, "use eps >=", after_model_load=True)
    assert not out.exists()  # refused before the run folder is made


def test_eval_of_a_custom_data_run_reuses_its_data_template_and_splits(tiny_dir, tmp_path, capsys, monkeypatch):
    """`zotune eval --checkpoint RUN` needs no data flags: the run's config.yaml (absolute paths) gives the data
    file, template, label words, split sizes and seed, from any working directory."""
    run = tmp_path / "run"
    monkeypatch.chdir(FIX / "custom")
    rel = ["--data", "reviews.jsonl", *CUSTOM[2:]]  # a relative path, stored absolute
    assert main(["train", "--model", str(tiny_dir), *rel, *SMALL, "--seed", "3", "--out", str(run)]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(run)]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["task"] == "custom" and evaluated["n"] == 2
    assert evaluated["accuracy"] == trained["fine_tuned_test"]


def test_help_shows_every_default_and_the_methods(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for f in config_fields():
        if not f.cli:
            continue
        flag = f.flag if not (f.type is bool and f.default) else f"--no-{f.key.replace('_', '-')}"
        assert flag in text
        if f.default not in (None, {}, False, True):
            assert f"[{f.default}]" in text, f.key
    import zotune

    for method in zotune.available_methods():
        assert method in text
    assert "kerzoo+pezo+dizo" in text and "zotune methods" in text
