"""The fast three-pass MeZO step equals the slow four-pass reference, and a trajectory replays exactly."""

from __future__ import annotations

import copy

import pytest
import torch

import zotune
from problems import MLPRegression
from zotune.core.samplers import Direction
from zotune.reference import reference_mezo_step


def _sampler_draw(optimizer: zotune.ZOOptimizer, step: int):  # type: ignore[no-untyped-def]
    def draw(index: int, p: torch.Tensor) -> torch.Tensor:
        direction = Direction(optimizer.base_seed, step, 0, index)
        return optimizer.sampler.sample(p.numel(), direction).view_as(p).to(p.dtype)

    return draw


@pytest.mark.parametrize("sampler", ["gaussian", "uniform", "rademacher", "gaussian-torch"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fast_step_equals_four_pass_reference(sampler: str, weight_decay: float) -> None:
    problem = MLPRegression()
    reference_model = copy.deepcopy(problem.model)
    optimizer = zotune.mezo(problem.model.parameters(), lr=5e-3, eps=1e-3, weight_decay=weight_decay, sampler=sampler, seed=7)
    reference_params = list(reference_model.parameters())

    def reference_loss() -> torch.Tensor:
        return torch.nn.functional.mse_loss(reference_model(problem.x), problem.y)

    for step in range(200):
        fast_loss = optimizer.step(problem.loss).item()
        slow_loss = reference_mezo_step(
            reference_params, reference_loss, _sampler_draw(optimizer, step), lr=5e-3, eps=1e-3, weight_decay=weight_decay
        )
        assert fast_loss == pytest.approx(slow_loss, rel=1e-4, abs=1e-6)
    moved = sum((p - q).abs().sum().item() for p, q in zip(problem.model.parameters(), MLPRegression().model.parameters()))
    assert moved > 1.0  # the comparison is over a real trajectory, not a standing start
    for fast, slow in zip(problem.model.parameters(), reference_params, strict=True):
        torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_weight_decay_mask_spares_vectors() -> None:
    weight = torch.nn.Parameter(torch.ones(3, 3))
    bias = torch.nn.Parameter(torch.ones(3))
    optimizer = zotune.mezo([weight, bias], lr=0.1, weight_decay=0.5, eps=1e-3)
    optimizer.step(lambda: torch.tensor(1.0))  # constant loss: only the decay moves anything
    torch.testing.assert_close(weight.detach(), torch.full((3, 3), 0.95), rtol=0, atol=1e-6)
    torch.testing.assert_close(bias.detach(), torch.ones(3), rtol=0, atol=1e-6)


def test_lr_scheduler_drives_the_step() -> None:
    w = torch.nn.Parameter(torch.zeros(4))
    optimizer = zotune.mezo([w], lr=0.1, eps=1e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.0 if step >= 1 else 1.0)
    optimizer.step(lambda: (w - 1).pow(2).sum())
    scheduler.step()
    after_first = w.detach().clone()
    assert after_first.abs().sum() > 0
    optimizer.step(lambda: (w - 1).pow(2).sum())
    torch.testing.assert_close(w.detach(), after_first, rtol=0, atol=1e-6)  # lr 0: restored, not moved
    assert optimizer.last_record is not None and optimizer.last_record.lrs == (0.0,)


def test_frozen_parameters_untouched_and_draw_nothing() -> None:
    trained = torch.nn.Parameter(torch.zeros(5))
    frozen = torch.nn.Parameter(torch.ones(5), requires_grad=False)
    optimizer = zotune.mezo([trained, frozen], lr=0.1)
    optimizer.step(lambda: (trained - 1).pow(2).sum() + frozen.sum())
    assert torch.equal(frozen.detach(), torch.ones(5))
    assert optimizer.random_numbers_drawn == 3 * 5  # three regenerations of the trained tensor only


def test_replay_reproduces_trained_weights() -> None:
    problem = MLPRegression()
    base = copy.deepcopy(problem.model)
    optimizer = zotune.mezo(problem.model.named_parameters(), lr=1e-2, weight_decay=0.01, seed=4, record_trajectory=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)
    for _ in range(60):
        optimizer.step(problem.loss)
        scheduler.step()
    assert optimizer.trajectory is not None and len(optimizer.trajectory) == 60
    replayer = zotune.mezo(base.named_parameters(), lr=1e-2, weight_decay=0.01, seed=4)
    assert zotune.replay(replayer, optimizer.trajectory) == 60
    for trained, replayed in zip(problem.model.parameters(), base.parameters(), strict=True):
        # the trained run also added and removed the probes, so they agree to rounding, not to the bit
        torch.testing.assert_close(replayed, trained, rtol=1e-5, atol=1e-6)
    assert not torch.equal(base[0].weight, MLPRegression().model[0].weight)


def test_one_step_record_is_the_update() -> None:
    w = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    optimizer = zotune.mezo([w], lr=0.5, seed=1)
    optimizer.step(lambda: ((w - 2) ** 2).sum())
    record = optimizer.last_record
    assert record is not None and record.step == 0 and record.seed == 1 and len(record.coefficients) == 1
    z = optimizer.sampler.sample(6, Direction(1, 0, 0, 0)).double()
    torch.testing.assert_close(w.detach(), -0.5 * record.coefficients[0] * z, rtol=1e-6, atol=1e-9)


def test_closure_must_return_a_scalar() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    optimizer = zotune.mezo([w], lr=0.1)
    with pytest.raises(ValueError, match="scalar loss"):
        optimizer.step(lambda: w + 1)
    with pytest.raises(ValueError, match="scalar loss"):
        optimizer.step(lambda: "loss")


def test_nothing_trainable_raises() -> None:
    w = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    optimizer = zotune.mezo([w], lr=0.1)
    with pytest.raises(ValueError, match="nothing to train"):
        optimizer.step(lambda: w.sum())


def test_build_optimizer_registry() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    assert "mezo" in zotune.available_methods()
    assert isinstance(zotune.build_optimizer("mezo", [w], lr=0.1), zotune.ZOOptimizer)
    with pytest.raises(ValueError, match="unknown method .adam.; available methods: mezo"):
        zotune.build_optimizer("adam", [w], lr=0.1)


def test_load_state_dict_rejects_foreign_state() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    optimizer = zotune.mezo([w], lr=0.1)
    with pytest.raises(ValueError, match="not a ZOOptimizer state dict"):
        optimizer.load_state_dict(torch.optim.SGD([w], lr=0.1).state_dict())


def test_unknown_option_is_named() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['kernel_order'\]"):
        zotune.mezo([w], lr=0.1, kernel_order=3)


@pytest.mark.parametrize(("dtype", "max_ulps"), [(torch.float32, 2.0), (torch.bfloat16, 2.0), (torch.float16, 2.0)])
def test_probe_round_trip_drift_is_a_few_ulps(dtype: torch.dtype, max_ulps: float) -> None:
    """With lr = 0 a step only probes and restores: theta + eps z - 2 eps z (+ eps z fused into the update).

    Two roundings to the parameter dtype happen before the restore, so theta drifts by at most a couple
    of ulps of its own magnitude, in every dtype; MeZO's four separate passes round three times.
    """
    generator = torch.Generator().manual_seed(0)
    start = (torch.randn(4096, generator=generator) * 0.05).to(dtype)
    w = torch.nn.Parameter(start.clone())
    optimizer = zotune.mezo([w], lr=0.0, eps=1e-3)
    optimizer.step(lambda: w.float().sum())
    z = optimizer.sampler.sample(4096, Direction(0, 0, 0, 0))
    # the roundings happen at theta +- eps z, so the ulp is that of the larger of the two
    largest = start.float().abs() + 2e-3 * z.abs()
    ulp = torch.finfo(dtype).eps * largest.clamp_min(torch.finfo(dtype).tiny)
    drift = (w.detach().float() - start.float()).abs()
    assert (drift <= max_ulps * ulp).all()
    assert not torch.equal(w.detach(), start) or dtype == torch.float32  # low precision does drift a little
