"""zotune inside the tools people already train with: the Hugging Face Trainer (``zotune.hf.ZOTrainer``),
Accelerate's prepared optimizer, a plain PyTorch loop and Lightning's manual optimisation (``examples/``).

Every run is a tiny Llama built from a config (about 23k parameters, no download) on sequences of 4 of its
32 tokens, which a few dozen ZO steps visibly learn. The runs use the ``gaussian-torch`` sampler: the
default counter-based sampler compiles its kernel on first use, which costs more than these runs.
"""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import transformers

import zotune
from zotune.hf import ZOTrainer
from zotune.train.loop import fresh_batch_indices

ROOT = Path(__file__).resolve().parents[1]
SAMPLER = "gaussian-torch"
EPS = 1e-3


def tiny_llama(seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)


def token_data(n: int = 8, length: int = 12, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 4, (length,), generator=generator)
        rows.append({"input_ids": ids, "labels": ids.clone()})
    return rows


@torch.no_grad()
def full_loss(model: torch.nn.Module, rows: list[dict[str, torch.Tensor]]) -> float:
    model.eval()
    return float(model(**transformers.default_data_collator(rows)).loss)


class RecordingCollator:
    """The Trainer's default collator, keeping every batch it makes (in the order the loader asks)."""

    def __init__(self) -> None:
        self.batches: list[dict[str, torch.Tensor]] = []

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = transformers.default_data_collator(rows)
        self.batches.append(batch)
        return batch


def training_args(out: Path, **overrides: Any) -> transformers.TrainingArguments:
    settings: dict[str, Any] = dict(
        output_dir=str(out), per_device_train_batch_size=4, max_steps=4, learning_rate=4e-3,
        lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )
    settings.update(overrides)
    return transformers.TrainingArguments(**settings)


def num_items(*batches: dict[str, torch.Tensor]) -> torch.Tensor:
    """The Trainer's count of a step's target tokens (labels shifted by one), which the model divides by."""
    return sum(batch["labels"][..., 1:].ne(-100).sum() for batch in batches)


def zotune_optimizer(optimizer: Any) -> zotune.ZOOptimizer:
    return optimizer if isinstance(optimizer, zotune.ZOOptimizer) else optimizer.optimizer


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), y in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y), f"{name} differs by {float((x - y).abs().max()):.3g}"


# --- Hugging Face Trainer ---------------------------------------------------------------------------------


def test_zotrainer_lowers_the_loss_with_one_zo_step_per_batch_and_no_gradients(tmp_path: Path) -> None:
    steps, lr = 30, 6e-3
    model, rows, collator = tiny_llama(), token_data(), RecordingCollator()
    start = copy.deepcopy(model)
    before = full_loss(model, rows)
    forwards: list[tuple[bool, bool]] = []  # (grad enabled, train mode) of every forward during training
    hook = model.register_forward_pre_hook(lambda module, args: forwards.append((torch.is_grad_enabled(), module.training)))
    args = training_args(tmp_path, max_steps=steps, learning_rate=lr, lr_scheduler_type="linear", logging_steps=10)
    trainer = ZOTrainer(
        model=model, args=args, train_dataset=rows, data_collator=collator, zo_method="mezo",
        zo_options={"eps": EPS, "sampler": SAMPLER, "record_trajectory": True},
    )
    trainer.train()
    hook.remove()

    after = full_loss(model, rows)
    assert after < before - 0.15, (before, after)  # 3.49 -> 3.30 here
    assert all(p.grad is None for p in model.parameters())
    assert len(forwards) == 2 * steps and not any(grad or train for grad, train in forwards)  # no_grad, eval mode

    zo = trainer.zo_optimizer()
    assert isinstance(zo, zotune.ZOOptimizer)
    assert zo.step_count == steps and zo.forward_passes == 2 * steps
    # the Trainer's linear schedule set the learning rate of every step
    assert [record.lrs[0] for record in zo.trajectory] == pytest.approx([lr * (steps - t) / steps for t in range(steps)])
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == steps // 10 and not any("grad_norm" in entry for entry in trainer.state.log_history)

    # the same steps in a plain zotune loop, on the batches the Trainer drew: the same weights, bit for bit
    plain = zotune.mezo(start.named_parameters(), lr=lr, eps=EPS, seed=args.seed, sampler=SAMPLER)
    schedule = torch.optim.lr_scheduler.LambdaLR(plain, lambda step: (steps - step) / steps)
    start.eval()
    for batch in collator.batches[:steps]:  # (Accelerate's loader may collate one batch ahead)
        plain.step(lambda: start(**batch, num_items_in_batch=num_items(batch)).loss)
        schedule.step()
    assert_same_weights(model, start)


def test_gradient_accumulation_takes_one_step_on_the_combined_batch(tmp_path: Path) -> None:
    steps, accumulate = 3, 2
    model, rows, collator = tiny_llama(), token_data(), RecordingCollator()
    start = copy.deepcopy(model)
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    args = training_args(tmp_path, max_steps=steps, per_device_train_batch_size=2, gradient_accumulation_steps=accumulate)
    trainer = ZOTrainer(model=model, args=args, train_dataset=rows, data_collator=collator,
                        zo_options={"eps": EPS, "sampler": SAMPLER})
    trainer.train()
    zo = trainer.zo_optimizer()
    assert zo.step_count == steps and zo.forward_passes == 2 * steps  # closure calls: 2 per step
    assert len(forwards) == 2 * accumulate * steps  # each closure call runs every micro-batch
    batches = collator.batches[: accumulate * steps]

    plain = zotune.mezo(start.named_parameters(), lr=args.learning_rate, eps=EPS, seed=args.seed, sampler=SAMPLER)
    start.eval()
    for first, second in zip(batches[0::2], batches[1::2], strict=True):
        count = num_items(first, second)  # the model divides each micro-batch's summed loss by the step's count

        def closure(first: dict = first, second: dict = second, count: torch.Tensor = count) -> torch.Tensor:
            return start(**first, num_items_in_batch=count).loss + start(**second, num_items_in_batch=count).loss

        plain.step(closure)
    assert_same_weights(model, start)


def test_resuming_from_a_checkpoint_continues_the_same_run(tmp_path: Path) -> None:
    rows, options = token_data(), {"eps": EPS, "sampler": SAMPLER}

    def run(out: Path, resume: str | None = None, save_steps: int | None = None) -> torch.nn.Module:
        model = tiny_llama()
        saving = {"save_strategy": "steps", "save_steps": save_steps} if save_steps else {}
        args = training_args(out, max_steps=6, per_device_train_batch_size=2, **saving)
        ZOTrainer(model=model, args=args, train_dataset=rows, zo_options=options).train(resume_from_checkpoint=resume)
        return model

    straight = run(tmp_path / "straight")
    run(tmp_path / "halted", save_steps=3)
    resumed = run(tmp_path / "halted", resume=str(tmp_path / "halted" / "checkpoint-3"))
    assert_same_weights(straight, resumed)


def test_a_given_zo_optimizer_and_scheduler_are_used(tmp_path: Path) -> None:
    model, rows, lr = tiny_llama(), token_data(), 1e-3
    zo = zotune.mezo(model.named_parameters(), lr=lr, eps=EPS, sampler=SAMPLER, record_trajectory=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(zo, lambda step: 0.5 ** step)
    trainer = ZOTrainer(model=model, args=training_args(tmp_path, max_steps=3), train_dataset=rows, optimizers=(zo, schedule))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]  # torch's step-order checks are satisfied
    assert zo.step_count == 3
    assert [record.lrs[0] for record in zo.trajectory] == pytest.approx([lr, lr / 2, lr / 4])


def test_dizo_searches_on_fresh_batches_of_the_training_set(tmp_path: Path) -> None:
    model, rows, collator = tiny_llama(), token_data(), RecordingCollator()
    args = training_args(tmp_path, max_steps=2, per_device_train_batch_size=2)
    trainer = ZOTrainer(model=model, args=args, train_dataset=rows, data_collator=collator, zo_method="dizo",
                        zo_options={"eps": EPS, "sampler": SAMPLER, "interval": 2, "search_iters": 1})
    asked = []
    fresh_closure = trainer._zo_fresh_closure
    trainer._zo_fresh_closure = lambda step, index: asked.append((step, index)) or fresh_closure(step, index)
    trainer.train()
    projection = next(t for t in trainer.zo_optimizer().transforms if isinstance(t, zotune.DiZOProjection))
    assert projection.cycles == 1 and projection.search_forward_passes == 2
    assert asked == [(2, 0)]  # the cycle after step 2 asked for one fresh batch ...
    indices = fresh_batch_indices(len(rows), 2, seed=args.seed, step=2, iteration=0)
    expected = transformers.default_data_collator([rows[i] for i in indices])
    assert torch.equal(collator.batches[-1]["input_ids"], expected["input_ids"])  # ... drawn from its own stream


def test_bad_settings_are_refused_before_training(tmp_path: Path) -> None:
    model, rows, args = tiny_llama(), token_data(), training_args(tmp_path)
    with pytest.raises(ValueError, match="unknown method"):
        ZOTrainer(model=model, args=args, train_dataset=rows, zo_method="adam")
    with pytest.raises(ValueError, match="learning_rate"):
        ZOTrainer(model=model, args=args, train_dataset=rows, zo_options={"lr": 1e-3})
    with pytest.raises(ValueError, match="unknown option"):
        ZOTrainer(model=model, args=args, train_dataset=rows, zo_options={"clip_norm": 1.0})
    with pytest.raises(TypeError, match="zotune optimizer"):
        ZOTrainer(model=model, args=args, train_dataset=rows, optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))
    with pytest.raises(ValueError, match="optimizer_cls_and_kwargs"):
        ZOTrainer(model=model, args=args, train_dataset=rows, optimizer_cls_and_kwargs=(torch.optim.SGD, {}))

    frozen = tiny_llama().requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        ZOTrainer(model=frozen, args=args, train_dataset=rows).create_optimizer()

    # outside the Trainer loop, step() without a closure is refused; step(closure) is the usual ZO step
    trainer = ZOTrainer(model=model, args=args, train_dataset=rows, zo_options={"sampler": SAMPLER})
    optimizer = trainer.create_optimizer()
    with pytest.raises(RuntimeError, match="no ZO step is pending"):
        optimizer.step()
    batch = transformers.default_data_collator(rows)
    loss = optimizer.step(lambda: model(**batch).loss)
    assert loss.shape == () and torch.isfinite(loss) and optimizer.step_count == 1


def test_fp16_is_refused(tmp_path: Path) -> None:
    args = training_args(tmp_path)
    args.fp16 = True  # TrainingArguments itself refuses fp16 on a CPU-only machine; the Trainer gets it set anyway
    with pytest.raises(ValueError, match="does not support fp16"):
        ZOTrainer(model=tiny_llama(), args=args, train_dataset=token_data())


def test_import_zotune_does_not_import_the_trainer() -> None:
    code = "import sys, zotune; assert 'transformers.trainer' not in sys.modules; print(zotune.ZOTrainer.__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "zotune.hf"
    assert zotune.ZOTrainer is ZOTrainer


# --- Accelerate -------------------------------------------------------------------------------------------


def test_accelerate_prepared_optimizer_passes_the_closure_on() -> None:
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    rows = token_data()
    batch = transformers.default_data_collator(rows)
    results = []
    for prepare in (False, True):
        model = tiny_llama().eval()
        optimizer = zotune.mezo(model.named_parameters(), lr=4e-3, eps=EPS, sampler=SAMPLER)
        if prepare:
            accelerator = Accelerator(cpu=True)
            model, optimizer = accelerator.prepare(model, optimizer)
            assert isinstance(optimizer, AcceleratedOptimizer)
            model.eval()
        losses = []
        for _ in range(5):
            optimizer.step(lambda: model(**batch).loss)  # AcceleratedOptimizer.step returns None, not the loss
            losses.append(list(zotune_optimizer(optimizer).last_step_losses))
        results.append((model, losses))
    (plain_model, plain_losses), (prepared_model, prepared_losses) = results
    assert prepared_losses == plain_losses
    assert_same_weights(plain_model, prepared_model)
    assert all(p.grad is None for p in prepared_model.parameters())


# --- examples/ --------------------------------------------------------------------------------------------


def load_example(name: str) -> ModuleType:
    sys.path.insert(0, str(ROOT / "examples"))  # lightning_manual imports plain_loop from beside it
    try:
        spec = importlib.util.spec_from_file_location(f"zotune_example_{name}", ROOT / "examples" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "examples"))


def test_plain_loop_example_lowers_the_loss() -> None:
    before, after = load_example("plain_loop").main(steps=30, sampler=SAMPLER)
    assert after < before - 0.2, (before, after)


def test_lightning_manual_example_lowers_the_loss_as_the_plain_loop_does() -> None:
    import lightning.pytorch as pl  # a test dependency (pyproject's `test` extra): this test must not skip

    class CountHooks(pl.Callback):
        def __init__(self) -> None:
            self.before_optimizer_step = 0
            self.batches = 0

        def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
            self.before_optimizer_step += 1  # Lightning's wrapper of the closure: once per probe

        def on_train_batch_end(self, *args: Any) -> None:
            self.batches += 1

    steps, counter = 30, CountHooks()
    before, after = load_example("lightning_manual").main(steps=steps, quiet=True, sampler=SAMPLER, callbacks=[counter])
    assert after < before - 0.2, (before, after)
    assert counter.batches == steps and counter.before_optimizer_step == 2 * steps  # the closure reached zotune
    assert (before, after) == load_example("plain_loop").main(steps=steps, sampler=SAMPLER)  # the same steps
