"""Data parallelism: ranks that share the directions and average only the probe losses take the steps a
single process takes on the combined batch, and keep identical weights.

Two ways to run ranks: threads joined by a ``LossSync(hook=...)`` (fast, every method of the matrix),
and real processes on loopback with torch.distributed's gloo backend (what ``torchrun`` runs).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

import zotune
from zotune.core.distributed import LossSync, Weighted, parameters_fingerprint

from optim_matrix import CASES, MethodCase
from problems import MLPRegression

STEPS = 6
WORLD = 2


class ThreadSum:
    """A sum across ``world`` threads: what an all-reduce does across processes."""

    def __init__(self, world: int) -> None:
        self.barrier = threading.Barrier(world)
        self.lock = threading.Lock()
        self.total: torch.Tensor | None = None
        self.result: torch.Tensor | None = None

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.total = values.clone() if self.total is None else self.total + values
        if self.barrier.wait() == 0:  # one thread publishes the sum and resets for the next call
            self.result, self.total = self.total, None
        self.barrier.wait()
        result = self.result.clone()
        self.barrier.wait()  # nobody starts the next sum before everyone has read this one
        return result


def float64_loss(problem: MLPRegression, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # the mean in float64: a float32 loss's rounding (1e-7 of the loss), divided by 2 eps in the difference
    # quotient, would hide what this file compares (the shards' mean against the combined batch's)
    return torch.nn.functional.mse_loss(problem.model(x).double(), y.double())


def shard_closure(problem: MLPRegression, rank: int, world: int):
    x, y = problem.x[rank::world], problem.y[rank::world]

    def closure() -> Weighted:
        return Weighted(float64_loss(problem, x, y), float(len(x)))

    return closure


def run_ranks_in_threads(case: MethodCase, world: int, steps: int) -> list[MLPRegression]:
    problems = [MLPRegression() for _ in range(world)]
    summer = ThreadSum(world)
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        try:
            problem = problems[rank]
            opt = case.build(list(problem.model.named_parameters()), **case.mlp, sync=LossSync(hook=summer))
            closure = shard_closure(problem, rank, world)
            for _ in range(steps):
                opt.step(closure)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)
            summer.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return problems


def single_process(case: MethodCase, steps: int) -> MLPRegression:
    problem = MLPRegression()
    opt = case.build(list(problem.model.named_parameters()), **case.mlp)
    for _ in range(steps):
        opt.step(lambda: float64_loss(problem, problem.x, problem.y))
    return problem


@pytest.mark.parametrize("case", CASES, ids=str)
def test_ranks_stay_identical_and_equal_one_process_on_the_combined_batch(case: MethodCase) -> None:
    start = MLPRegression()
    ranks = run_ranks_in_threads(case, WORLD, STEPS)
    alone = single_process(case, STEPS)
    fingerprints = [parameters_fingerprint(r.model.parameters()) for r in ranks]
    assert torch.equal(fingerprints[0], fingerprints[1]), "the ranks' weights drifted apart"
    moved = False
    for p_rank, p_alone, p_start in zip(ranks[0].model.parameters(), alone.model.parameters(), start.model.parameters()):
        # the two half-batch means, averaged in float64, equal the full-batch mean up to float64 rounding
        torch.testing.assert_close(p_rank, p_alone, rtol=1e-6, atol=1e-7)
        moved |= not torch.equal(p_rank, p_start)
    assert moved, "no step changed the weights"


def test_unequal_shards_are_weighted_by_their_size() -> None:
    """Shards of 48 and 16 examples: weighting by size gives the combined batch's loss; equal weights do not."""
    problem = MLPRegression()
    full = float(problem.loss())
    sizes = [48, 16]
    losses = [float(torch.nn.functional.mse_loss(problem.model(problem.x[a:b]), problem.y[a:b]))
              for a, b in ((0, 48), (48, 64))]
    summer = ThreadSum(2)
    results: list[float] = [0.0, 0.0]
    unweighted: list[float] = [0.0, 0.0]

    def rank_main(rank: int) -> None:
        sync = LossSync(hook=summer)
        results[rank] = sync.mean_loss(losses[rank], float(sizes[rank]))
        unweighted[rank] = sync.mean_loss(losses[rank])

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == results[1]
    assert results[0] == pytest.approx(full, rel=1e-6)
    assert unweighted[0] != pytest.approx(full, rel=1e-3)


def test_loss_sync_validates_its_inputs() -> None:
    with pytest.raises(ValueError, match="either a process group or a hook"):
        LossSync(group=object(), hook=lambda t: t)
    with pytest.raises(ValueError, match="weight"):
        LossSync(hook=lambda t: t).mean_loss(1.0, -1.0)
    with pytest.raises(ValueError, match="shape"):
        LossSync(hook=lambda t: t[:1]).mean_loss(1.0)
    with pytest.raises(ValueError, match="LossSync"):
        zotune.mezo([torch.zeros(2, requires_grad=True)], sync="gloo")
    with pytest.raises(RuntimeError, match="init_process_group"):
        LossSync().mean_loss(1.0)


def test_a_non_finite_loss_on_one_rank_drops_the_step_on_every_rank() -> None:
    problems = [MLPRegression() for _ in range(WORLD)]
    summer = ThreadSum(WORLD)
    dropped: list[int] = [0] * WORLD

    def rank_main(rank: int) -> None:
        problem = problems[rank]
        opt = zotune.mezo(list(problem.model.named_parameters()), lr=1e-2, sync=LossSync(hook=summer))
        closure = shard_closure(problem, rank, WORLD)
        for step in range(3):
            bad = rank == 1 and step == 1
            opt.step((lambda: torch.tensor(float("nan"))) if bad else closure)
        dropped[rank] = opt.nonfinite_steps

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(WORLD)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dropped == [1, 1]
    assert torch.equal(parameters_fingerprint(problems[0].model.parameters()),
                       parameters_fingerprint(problems[1].model.parameters()))


# --- real processes: torch.distributed with gloo on loopback ------------------------------------------------

GLOO_METHODS = ("mezo", "kerzoo", "pezo", "dizo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_rank(rank: int, world: int, port: int, results: Any) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        out = {}
        for name in GLOO_METHODS:
            case = next(c for c in CASES if c.name == name)
            problem = MLPRegression()
            if rank == 1:  # a different start on purpose: the broadcast must make the ranks agree
                with torch.no_grad():
                    for p in problem.model.parameters():
                        p.add_(1.0)
            sync = LossSync()
            sync.broadcast_parameters(problem.model.parameters())
            opt = case.build(list(problem.model.named_parameters()), **case.mlp, sync=sync)
            closure = shard_closure(problem, rank, world)
            for _ in range(STEPS):
                opt.step(closure)
            out[name] = {
                "params": [p.detach().clone() for p in problem.model.parameters()],
                "bytes": sync.bytes_exchanged, "calls": sync.calls, "forward_passes": opt.forward_passes,
            }
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_gloo_processes_match_one_process_and_exchange_a_few_bytes() -> None:
    context = mp.get_context("spawn")
    manager = context.Manager()
    results = manager.dict()
    port = _free_port()
    processes = [context.Process(target=_gloo_rank, args=(r, WORLD, port, results)) for r in range(WORLD)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=240)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    for name in GLOO_METHODS:
        case = next(c for c in CASES if c.name == name)
        rank0, rank1 = results[0][name], results[1][name]
        for a, b in zip(rank0["params"], rank1["params"]):
            assert torch.equal(a, b), f"{name}: the ranks' weights differ"
        alone = single_process(case, STEPS)
        for a, b in zip(rank0["params"], alone.model.parameters()):
            torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)
        # 16 bytes (two float64) per forward pass and nothing else: no gradients, no weights
        assert rank0["calls"] == rank0["forward_passes"]
        assert rank0["bytes"] == 16 * rank0["forward_passes"]
