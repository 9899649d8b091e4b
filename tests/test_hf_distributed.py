"""``ZOTrainer`` under data parallelism: the Trainer's own DDP setup (what ``torchrun`` gives it), here two
gloo processes on loopback, each told its rank through the environment variables torchrun sets.

The ranks must end with bit-identical weights, equal to those of one process whose batch is the two
ranks' batches together, while exchanging only a few bytes per step (and the model is not wrapped in
``DistributedDataParallel``). The tiny Llama and its loss run in float64 (through the Trainer's
``compute_loss_func``: the model's own loss upcasts the logits to float32 only) so that the comparison
with one process is not hidden by float32 rounding: a rank's loss covers its half of the target tokens,
and the two halves together equal the whole batch's loss only up to rounding, which the difference
quotient divides by 2 eps. Rows carry different numbers of target tokens, so the ranks' shares differ
and an unweighted mean of per-rank means would be visibly wrong.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torch.multiprocessing as mp
import transformers

from test_integrations import RecordingCollator
from zotune.hf import ZOTrainer

WORLD = 2
PER_DEVICE = 2
STEPS = 4
LR = 2e-2
EPS = 1e-3
SAMPLER = "gaussian-torch"  # the default sampler compiles a kernel on first use, which costs more than these runs


class Config(NamedTuple):
    """A run: the Trainer divides a rank's summed loss by the target tokens of all ranks
    (``average_tokens_across_devices``, its default) or of this rank only (which ZOTrainer then weights by
    those tokens); ``accumulate`` micro-batches make a step; DiZO's projection search also evaluates fresh
    batches drawn from the training set every ``interval`` steps, which the ranks split between them."""

    average_tokens: bool
    method: str = "mezo"
    options: dict[str, Any] = {}
    accumulate: int = 1


CONFIGS = {
    "tokens-of-all-ranks": Config(average_tokens=True),
    "tokens-of-each-rank": Config(average_tokens=False),
    "gradient-accumulation": Config(average_tokens=True, accumulate=2),
    "dizo-fresh-batches": Config(average_tokens=True, method="dizo", options={"interval": 2, "search_iters": 1}),
}


def tiny_llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).double()


def token_rows(n: int = WORLD * PER_DEVICE * STEPS, length: int = 12) -> list[dict[str, torch.Tensor]]:
    """Sequences whose last 0 to 7 positions are not targets (label -100): the rows' token counts differ."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 4, (length,), generator=generator)
        labels = ids.clone()
        ignored = int(torch.randint(0, 8, (), generator=generator))
        if ignored:
            labels[-ignored:] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def float64_lm_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """The causal LM loss (next-token cross-entropy) in float64, divided by the Trainer's target count
    (which, with ``average_tokens_across_devices``, counts every rank's targets)."""
    logits = outputs.logits[..., :-1, :].reshape(-1, outputs.logits.shape[-1]).double()
    targets = labels[..., 1:].reshape(-1).to(logits.device)
    total = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
    count = targets.ne(-100).sum() if num_items_in_batch is None else num_items_in_batch
    return total / count




class RecordingTrainer(ZOTrainer):
    """ZOTrainer, keeping the batch of every training step and every fresh batch DiZO's search drew."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.step_batches: list[dict[str, torch.Tensor]] = []
        self.fresh_batches: list[dict[str, torch.Tensor]] = []
        super().__init__(*args, **kwargs)

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        self.step_batches.append({key: value.clone() for key, value in inputs.items()})
        return super().training_step(model, inputs, num_items_in_batch)

    def _zo_fresh_closure(self, step: int, index: int) -> Any:
        made = len(self.data_collator.batches)
        closure = super()._zo_fresh_closure(step, index)
        self.fresh_batches.extend(self.data_collator.batches[made:])  # this rank's share, collated just now
        return closure


def training_args(
    out: Path, per_device: int, average_tokens: bool, accumulate: int = 1
) -> transformers.TrainingArguments:
    # no ddp_backend: on CPUs Accelerate joins the ranks with gloo (and a backend given to a lone process
    # would make it look for a process group)
    return transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulate,
        max_steps=STEPS, learning_rate=LR, lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, disable_tqdm=True, seed=0, dataloader_num_workers=0,
        average_tokens_across_devices=average_tokens,
    )


def make_trainer(out: Path, config: str, model: torch.nn.Module, processes: int, **arguments: Any) -> RecordingTrainer:
    """The trainer of ``config`` for one of ``processes`` processes: every step takes PER_DEVICE * WORLD rows
    in all, so one process's micro-batches are the ranks' micro-batches together."""
    average_tokens, method, options, accumulate = CONFIGS[config]
    per_device = PER_DEVICE // accumulate * (WORLD // processes)
    args = training_args(out, per_device, average_tokens, accumulate)
    for key, value in arguments.items():
        setattr(args, key, value)
    return RecordingTrainer(
        model=model, args=args, train_dataset=token_rows(), data_collator=RecordingCollator(),
        compute_loss_func=float64_lm_loss, zo_method=method, zo_options={"eps": EPS, "sampler": SAMPLER, **options},
    )


class CollectiveCounter:
    """Counts the payload bytes of every ``torch.distributed`` collective called from Python while active
    (ZOTrainer's, Accelerate's and the Trainer's, and DDP's if the model were wrapped: its broadcasts go
    through ``torch.distributed._broadcast_coalesced``)."""

    TENSOR_OPS = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
                  "reduce", "gather", "scatter", "_broadcast_coalesced")
    OBJECT_OPS = ("all_gather_object", "broadcast_object_list", "gather_object", "scatter_object_list")

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self._saved: dict[str, Any] = {}

    @staticmethod
    def _tensor_bytes(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, (list, tuple)):
            return sum(CollectiveCounter._tensor_bytes(v) for v in value)
        return 0

    def __enter__(self) -> "CollectiveCounter":
        import torch.distributed as dist

        for name in self.TENSOR_OPS + self.OBJECT_OPS:
            original = getattr(dist, name, None)
            if original is None:
                continue
            self._saved[name] = original

            def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
                if _name in self.OBJECT_OPS:
                    size = len(pickle.dumps(args[0])) if args else 0
                else:
                    size = self._tensor_bytes(args[0]) if args else 0
                self.bytes[_name] = self.bytes.get(_name, 0) + size
                return _original(*args, **kwargs)

            setattr(dist, name, counted)
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch.distributed as dist

        for name, original in self._saved.items():
            setattr(dist, name, original)


def _refusal(make: Callable[[], Any]) -> str:
    """The message of the error ``make()`` raises, or "accepted"."""
    try:
        make()
    except (ValueError, TypeError) as exc:
        return str(exc)
    return "accepted"


def _rank_main(rank: int, port: int, out: str) -> None:
    """One rank: its results to ``out/rank<r>.pt``, or its traceback to ``out/rank<r>.error``."""
    try:
        outcome = _run_rank(rank, port, Path(out))
    except BaseException:  # the test shows it (the other rank then waits for a collective until killed)
        import traceback

        (Path(out) / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
    torch.save(outcome, Path(out) / f"rank{rank}.pt")


def _run_rank(rank: int, port: int, out: Path) -> dict[str, Any]:
    # what torchrun sets for each process it starts; TrainingArguments joins the process group from them
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    import zotune
    from zotune.core.distributed import parameters_fingerprint

    outcome: dict[str, Any] = {}
    for config in CONFIGS:
        model = tiny_llama()
        if rank == 1:  # a different start on purpose: ZOTrainer's broadcast must make the ranks agree
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.5)
        trainer = make_trainer(out / f"rank{rank}-{config}", config, model, WORLD)
        with CollectiveCounter() as counter:
            trainer.train()
        zo = trainer.zo_optimizer()
        outcome[config] = {
            "world_size": trainer.args.world_size,
            "parallel_mode": trainer.args.parallel_mode.value,
            "wrapper": type(trainer.model_wrapped).__name__,
            "params": [p.detach().clone() for p in model.parameters()],
            "fingerprint": parameters_fingerprint(model.parameters()),
            "batches": trainer.step_batches, "fresh_batches": trainer.fresh_batches,
            "steps": zo.step_count, "forward_passes": zo.forward_passes,
            "sync_bytes": zo.sync.bytes_exchanged, "sync_calls": zo.sync.calls,
            "collective_bytes": dict(counter.bytes),
            "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        }

    # what cannot work across ranks is refused before training (constructing a trainer exchanges nothing)
    model = tiny_llama()
    plain_opt = zotune.mezo(model.named_parameters(), lr=LR, sampler=SAMPLER)
    outcome["refusals"] = {
        "uneven last batches": _refusal(lambda: make_trainer(
            out / "uneven", "tokens-of-all-ranks", model, WORLD,
            accelerator_config=transformers.trainer_pt_utils.AcceleratorConfig(even_batches=False))),
        "uneven last batches dropped": _refusal(lambda: make_trainer(
            out / "dropped", "tokens-of-all-ranks", model, WORLD, dataloader_drop_last=True,
            accelerator_config=transformers.trainer_pt_utils.AcceleratorConfig(even_batches=False))),
        "optimizer without sync": _refusal(lambda: ZOTrainer(
            model=model, args=training_args(out / "given", PER_DEVICE, True), train_dataset=token_rows(),
            optimizers=(plain_opt, None))),
    }
    return outcome


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Any]:
    """Every configuration, trained by two ranks (spawned once for all of them)."""
    out = tmp_path_factory.mktemp("ranks")
    context = mp.get_context("spawn")
    port = _free_port()
    processes = [context.Process(target=_rank_main, args=(r, port, str(out))) for r in range(WORLD)]
    for p in processes:
        p.start()
    deadline = time.monotonic() + 240
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        if any((out / f"rank{r}.error").exists() for r in range(WORLD)):
            break  # the other rank may wait forever for a collective of the one that failed
        time.sleep(0.2)
    for p in processes:
        if p.is_alive():
            p.kill()
        p.join()
    errors = [f"rank {r}:\n{(out / f'rank{r}.error').read_text()}" for r in range(WORLD)
              if (out / f"rank{r}.error").exists()]
    assert not errors, "\n".join(errors)
    assert [p.exitcode for p in processes] == [0] * WORLD, "a rank was killed (past the deadline) or crashed"
    return {r: torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)}


@pytest.mark.parametrize("config", CONFIGS)
def test_ranks_stay_identical_and_take_one_process_steps_on_the_combined_batch(
    ranks: dict[int, Any], config: str, tmp_path: Path
) -> None:
    rank0, rank1 = ranks[0][config], ranks[1][config]
    assert rank0["world_size"] == WORLD and rank0["parallel_mode"] == "distributed"
    assert rank0["steps"] == rank1["steps"] == STEPS

    # 1. the ranks end bit-identical (rank 1 started elsewhere: rank 0's weights were broadcast)
    assert torch.equal(rank0["fingerprint"], rank1["fingerprint"])
    for a, b in zip(rank0["params"], rank1["params"], strict=True):
        assert torch.equal(a, b)
    assert rank0["losses"] == rank1["losses"]  # the logged loss is the agreed one

    # 2. each rank saw its own half of every step's batch, and the halves differ in target tokens
    for first, second in zip(rank0["batches"], rank1["batches"], strict=True):
        assert not torch.equal(first["input_ids"], second["input_ids"])
    assert any(int(a["labels"].ne(-100).sum()) != int(b["labels"].ne(-100).sum())
               for a, b in zip(rank0["batches"], rank1["batches"]))

    # 3. they equal one process whose per-device batch is both halves together (float64 rounding apart)
    start, alone = tiny_llama(), tiny_llama()
    trainer = make_trainer(tmp_path, config, alone, 1)
    trainer.train()
    assert len(trainer.step_batches) == STEPS * CONFIGS[config].accumulate
    for micro, combined in enumerate(trainer.step_batches):  # the same examples, in rank order
        for key in ("input_ids", "labels"):
            expected = torch.cat([rank0["batches"][micro][key], rank1["batches"][micro][key]])
            assert torch.equal(combined[key], expected), f"micro-batch {micro}: the single process's differs"
    # DiZO's fresh batches: the ranks drew the single process's batch and took every other row of it
    assert len(trainer.fresh_batches) == len(rank0["fresh_batches"]) == len(rank1["fresh_batches"])
    assert (len(trainer.fresh_batches) > 0) == (config == "dizo-fresh-batches")
    for whole, *shares in zip(trainer.fresh_batches, rank0["fresh_batches"], rank1["fresh_batches"]):
        for rank, share in enumerate(shares):
            assert torch.equal(share["input_ids"], whole["input_ids"][rank::WORLD])
    moved = False
    for a, b, s in zip(rank0["params"], alone.parameters(), start.parameters(), strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-9)
        moved |= not torch.equal(a, s.detach())
    assert moved, "training did not change the weights"
    assert rank0["forward_passes"] == trainer.zo_optimizer().forward_passes

    # 4. no DDP wrapper; 16 bytes per forward pass through LossSync and little else
    assert rank0["wrapper"] == "LlamaForCausalLM"
    assert rank0["sync_calls"] == rank0["forward_passes"]  # DiZO's search passes included
    assert rank0["sync_bytes"] == 16 * rank0["forward_passes"]
    sent = dict(rank0["collective_bytes"])
    assert sent.pop("broadcast") == rank0["param_bytes"]  # the one broadcast at the start, nothing else
    assert "_broadcast_coalesced" not in sent  # DDP's way of syncing weights and buffers
    beyond_sync = sum(sent.values()) - rank0["sync_bytes"]
    # the Trainer's own: the all-gathers of its token count and of the logged loss, a few dozen bytes a step
    # (counted as the gathered lists, every rank's share) and the loss it reports at the end
    assert beyond_sync <= 64 * STEPS, sent


def test_what_cannot_work_across_ranks_is_refused(ranks: dict[int, Any]) -> None:
    refusals = ranks[0]["refusals"]
    assert "even_batches" in refusals["uneven last batches"]
    assert refusals["uneven last batches dropped"] == "accepted"
    assert "sync=zotune.LossSync()" in refusals["optimizer without sync"]
