"""The training loop and run folder on a tiny local model: files, checkpoints, NaN handling, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zotune.llm.evaluate import evaluate
from zotune.llm.models import load_model
from zotune.llm.objectives import Scorer
from zotune.train.config import TrainConfig, load_config_file, resolve_config
from zotune.train.loop import BatchSampler, TrainingDiverged, prepare_data, resolve_task, train
from zotune.train.checkpoint import load_checkpoint

FIX = Path(__file__).parent / "fixtures"


def config(tiny_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model=str(tiny_dir), data=str(FIX / "custom" / "reviews.jsonl"), template="Review: {review}\nIt was",
                label_words="neg=terrible,pos=great", label_field="sentiment", steps=4, eval_every=2, num_train=6,
                num_dev=2, num_eval=2, batch_size=2, lr=1e-2, eps=1e-2, out=str(out), progress=False,
                zero_shot=False)  # the random tiny model's zero-shot dev ties the trained steps and would win
    return TrainConfig.from_flat(**{**base, **kw})


def test_run_folder_contents_and_checkpoint_reload(tiny_dir, tmp_path):
    cfg = config(tiny_dir, tmp_path / "run")
    summary = train(cfg)
    run = tmp_path / "run"
    assert {"config.yaml", "metrics.jsonl", "summary.json", "curves.png", "checkpoint"} <= {p.name for p in run.iterdir()}
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in records if "loss" in r]
    assert [r["step"] for r in step_rows] == [1, 2, 3, 4]
    assert step_rows[-1]["forward_passes"] == 8 and all(r["lr"] == 1e-2 for r in step_rows)
    assert any("dev_accuracy" in r for r in records)
    saved = json.loads((run / "summary.json").read_text())
    assert saved["status"] == "completed" and saved["forward_passes"] == 8 and saved["steps"] == 4
    for key in ("final", "wall_seconds", "peak_memory_mb", "best_step", "trainable_params", "seed_log_bytes"):
        assert key in saved
    assert "accuracy" in saved["final"]["test"] and saved["best_step"] > 0
    assert saved["packed_forwards"] is True  # a tiny Llama: packed rows by default
    files = {p.name for p in (run / "checkpoint").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files  # adapter only
    # the best checkpoint reloads onto a fresh base model and reproduces the final test metric
    loaded = load_model(str(tiny_dir))
    model = load_checkpoint(loaded.model, run / "checkpoint")
    task = resolve_task(cfg)
    splits = prepare_data(cfg, task)
    again = evaluate(Scorer(model, loaded.tokenizer, cfg.data.max_length), task, splits.test)
    assert again["accuracy"] == summary["final"]["test"]["accuracy"]
    resolved = (run / "config.yaml").read_text()
    assert "lr: 0.01" in resolved and "objective: ce" in resolved


@pytest.mark.parametrize("peft,expected", [("full", "model.safetensors"), ("prefix", "adapter_model.safetensors")])
def test_full_and_prefix_runs(tiny_dir, tmp_path, peft, expected):
    summary = train(config(tiny_dir, tmp_path / peft, peft=peft, steps=2, eval_every=0, lr=1e-3))
    assert summary["status"] == "completed" and summary["forward_passes"] == 4
    assert (tmp_path / peft / "checkpoint" / expected).is_file()
    if peft == "full":
        from safetensors.torch import load_file

        names = set(load_file(str(tmp_path / peft / "checkpoint" / "model.safetensors")))
        assert names and "model.embed_tokens.weight" not in names  # only the trainable set


def test_generation_task_with_nondifferentiable_objective(tiny_dir, tmp_path):
    cfg = config(tiny_dir, tmp_path / "qa", data=str(FIX / "custom" / "qa.jsonl"), template="Q: {question}\nA:",
                 label_words=None, answer_field="answer", objective="f1", max_new_tokens=4, steps=2, num_train=3,
                 num_dev=1, num_eval=1)
    summary = train(cfg)
    assert summary["objective"] == "f1" and "f1" in summary["final"]["test"]
    losses = [json.loads(l)["loss"] for l in (tmp_path / "qa" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(l)]
    assert all(-1.0 <= v <= 0.0 for v in losses)  # minus the batch F1


def test_nonfinite_losses_stop_the_run_and_keep_the_checkpoint(tiny_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = Scorer.loss

    def flaky(self, batch, objective, max_new_tokens=50):
        calls["n"] += 1
        return real(self, batch, objective, max_new_tokens) if calls["n"] <= 4 else torch.tensor(float("nan"))

    monkeypatch.setattr(Scorer, "loss", flaky)
    cfg = config(tiny_dir, tmp_path / "nan", steps=20, eval_every=1, max_nonfinite=3)
    with pytest.raises(TrainingDiverged, match="3 non-finite losses in a row"):
        train(cfg)
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["nonfinite_steps"] == 3
    meta = json.loads((tmp_path / "nan" / "checkpoint" / "zotune_checkpoint.json").read_text())
    assert meta["step"] <= 2  # the last good checkpoint, from before the NaNs
    records = [json.loads(l) for l in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in records if r.get("nonfinite")) == 3


def test_bad_input_leaves_no_run_folder(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        train(TrainConfig.from_flat(task="nope", out=str(tmp_path / "a"), progress=False))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"review": "fine", "sentiment": "pos"}\n{"review": "hmm", "sentiment": "maybe"}\n')
    with pytest.raises(ValueError, match="line 2: label 'maybe' is not among the candidates"):
        train(config(tiny_dir, tmp_path / "b", data=str(bad)))
    with pytest.raises(ValueError, match="unknown model 'no-such-model'.*smollm2-135m"):
        train(config("no-such-model", tmp_path / "c"))
    with pytest.raises(ValueError, match="unknown method"):
        train(config(tiny_dir, tmp_path / "d", method="sgd"))
    assert not any((tmp_path / name).exists() for name in "abcd")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "summary.json").write_text("{}")
    with pytest.raises(FileExistsError, match="is not empty and is not a zotune run folder"):
        train(config(tiny_dir, tmp_path / "e"))


def test_config_files_and_overrides(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('task = "bbc"\nsteps = 7\nbatch-size = 4\nlr = 0.001\n')
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("train:\n  task: rte\n  peft: prefix\n")
    cfg = resolve_config(load_config_file(toml), {"steps": 9, "seed": None})
    assert (cfg.data.task, cfg.run.steps, cfg.method.batch_size, cfg.resolved_lr) == ("bbc", 9, 4, 1e-3)
    cfg = resolve_config(load_config_file(yaml_file))
    assert (cfg.data.task, cfg.model.peft, cfg.resolved_lr, cfg.resolved_eps) == ("rte", "prefix", 2e-2, 1e-1)
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n")
    with pytest.raises(ValueError, match="malformed config file"):
        load_config_file(bad)
    with pytest.raises(ValueError, match="unknown option\\(s\\) in config file: stepz"):
        resolve_config({"stepz": 3})
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainConfig.from_flat(batch_size=0)
    with pytest.raises(ValueError, match="unknown peft 'adapter'; use one of full, lora, prefix"):
        TrainConfig.from_flat(peft="adapter")


def test_batch_sampler_is_seeded_and_covers_each_epoch():
    a, b = BatchSampler(10, 4, seed=1), BatchSampler(10, 4, seed=1)
    first = [a.next() for _ in range(2)]
    assert first == [b.next() for _ in range(2)]
    assert len(set(first[0] + first[1])) == 8


def test_combined_method_with_options_and_dizo_search_batches(tiny_dir, tmp_path, monkeypatch):
    """`kerzoo-unbiased+pezo-block+dizo` through the runner: component options from the config (nested and
    flat) reach their component, DiZO's search gets fresh batches through the runner's generic
    ``fresh_closure`` (2 forwards per step plus 2J per cycle, each pair on the batch of its iteration) and
    draws are logged."""
    import zotune
    import zotune.train.loop as loop_module

    built, splits, fresh_calls, loss_batches = [], [], [], []
    real_build, real_prepare = zotune.build_optimizer, loop_module.prepare_data
    real_fresh, real_loss = loop_module.fresh_batch_indices, Scorer.loss

    def build(method, params, **options):
        built.append((options, real_build(method, params, **options)))
        return built[-1][1]

    def prepare(*args, **kwargs):
        splits.append(real_prepare(*args, **kwargs))
        return splits[-1]

    def fresh(num_examples, batch_size, *, seed, step, iteration):
        indices = real_fresh(num_examples, batch_size, seed=seed, step=step, iteration=iteration)
        fresh_calls.append((step, iteration, indices))
        return indices

    def loss(self, batch, objective, max_new_tokens=50):
        loss_batches.append([id(example) for example in batch])
        return real_loss(self, batch, objective, max_new_tokens)

    monkeypatch.setattr(zotune, "build_optimizer", build)
    monkeypatch.setattr(loop_module, "prepare_data", prepare)
    monkeypatch.setattr(loop_module, "fresh_batch_indices", fresh)
    monkeypatch.setattr(Scorer, "loss", loss)
    cfg = config(
        tiny_dir, tmp_path / "combo", method="kerzoo-unbiased+pezo-block+dizo", peft="lora", steps=4, eval_every=0,
        method_options={"kerzoo_unbiased": {"kernel_order": 5}, "pool_size": 1024, "interval": 2, "search_iters": 3,
                        "projected": "auto"},
    )
    summary = train(cfg)
    assert summary["forward_passes"] == 4 * 2 + 2 * (2 * 3)  # two DiZO cycles of 3 probe pairs
    # the options reached their components; the loop handed every component the same generic inputs
    (options, opt), = built[-1:]  # the first build is the stand-in check before the model loads
    assert opt.estimator.kernel_order == 5 and opt.sampler.pool_size == 1024
    projection, = [t for t in opt.transforms if t.name == "dizo"]
    assert (projection.interval, projection.search_iters) == (2, 3)
    assert "search_closure" not in options and callable(options["fresh_closure"]) and options["total_steps"] == 4
    # DiZO's search asked the runner for a fresh batch per iteration of the cycles after updates 2 and 4 ...
    assert [(step, j) for step, j, _ in fresh_calls] == [(2, 0), (2, 1), (2, 2), (4, 0), (4, 1), (4, 2)]
    # ... and ran each probe pair on that batch: steps 1-2 (4 forwards), cycle 1 (6), steps 3-4 (4), cycle 2 (6)
    train_split = splits[0].train
    fresh_batches = [[id(train_split[i]) for i in indices] for _, _, indices in fresh_calls]
    assert len(loss_batches) == 20
    assert loss_batches[4:10] == [b for b in fresh_batches[:3] for _ in range(2)]
    assert loss_batches[14:20] == [b for b in fresh_batches[3:] for _ in range(2)]
    # not the batch of the step that ended the cycle, which the search would reuse without fresh_closure
    assert any(b != loss_batches[3] for b in fresh_batches[:3]) and any(b != loss_batches[13] for b in fresh_batches[3:])
    records = [json.loads(l) for l in (tmp_path / "combo" / "metrics.jsonl").read_text().splitlines()]
    draws = [r["random_numbers"] for r in records if "loss" in r]
    assert len(draws) == 4 and all(0 < d < 3 * 1024 + 1000 for d in draws)  # a pool, not one number per weight
    with pytest.raises(ValueError, match="unknown option"):
        train(config(tiny_dir, tmp_path / "bad", method="kerzoo-unbiased", method_options={"pool_size": 8}))


def test_a_runs_peak_memory_is_its_own_not_an_earlier_jobs_in_the_same_process(tiny_dir, tmp_path):
    """A study runs many trainings in one process: each summary's peak must not be the largest peak so far.
    Here 512 MiB is touched and freed before a tiny run whose own peak is far below the process's."""
    from zotune.core.memory import peak_rss_mb, reset_peak_rss

    if not reset_peak_rss():
        pytest.skip("the RSS high-water mark cannot be reset here (not Linux)")
    before = peak_rss_mb()
    big = torch.ones(128 * 2**20)  # 512 MiB, touched, so it is resident
    process_peak = peak_rss_mb()
    del big  # torch returns an allocation this large to the system at once
    assert process_peak > before + 400
    summary = train(config(tiny_dir, tmp_path / "run"))
    assert summary["peak_memory_scope"] == "run"
    assert 0 < summary["peak_memory_mb"] < process_peak - 300, (summary["peak_memory_mb"], process_peak)
