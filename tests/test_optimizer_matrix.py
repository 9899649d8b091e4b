"""Generic tests every method in ``optim_matrix.CASES`` must pass."""

from __future__ import annotations

import copy

import pytest
import torch

import zotune

from optim_matrix import CASES, MethodCase
from problems import MLPRegression, Quadratic, mean_step_from_a_fixed_point

pytestmark = pytest.mark.parametrize("case", CASES, ids=str)


def test_converges_on_quadratic(case: MethodCase) -> None:
    case.check_limits("test_converges_on_quadratic")
    problem = Quadratic()
    optimizer = case.build([problem.w], seed=3, **case.quadratic)
    start = problem.loss().item()
    for _ in range(400):
        optimizer.step(problem.loss)
    assert problem.loss().item() < 1e-3 * start


def test_converges_on_mlp_regression(case: MethodCase) -> None:
    case.check_limits("test_converges_on_mlp_regression")
    problem = MLPRegression()
    optimizer = case.build(problem.model.named_parameters(), seed=5, **case.mlp)
    start = problem.loss().item()
    for _ in range(500):
        optimizer.step(problem.loss)
    assert problem.loss().item() < 0.1 * start


def test_mean_estimate_matches_true_gradient(case: MethodCase) -> None:
    """Average of the estimate over many seeds vs the exact gradient of a quadratic.

    Each step is taken with lr = 1 from the same point, so theta_before - theta_after is the estimate
    g_hat. For z with E[z z^T] = I, Var[g_hat_i] <= |g|^2 + 2 g_i^2 per query; the mean over M steps must
    be within 5 standard errors in every coordinate (a fixed-seed test: deterministic, and the bound
    is far from the estimate's own noise floor).
    """
    case.check_limits("test_mean_estimate_matches_true_gradient")
    problem = Quadratic(dim=8, dtype=torch.float64)
    with torch.no_grad():
        problem.w.copy_(torch.linspace(-1.0, 1.0, 8, dtype=torch.float64))
    true_gradient = problem.gradient()
    options = dict(case.quadratic, lr=1.0)
    optimizer = case.build([problem.w], seed=11, **options)
    samples = 3000
    mean = mean_step_from_a_fixed_point(optimizer, problem, samples)
    queries = getattr(optimizer.estimator, "n_queries", 1)
    stderr = (case.variance_factor * (true_gradient.norm() ** 2 + 2 * true_gradient**2) / (samples * queries)).sqrt()
    tolerance = 5 * stderr
    if not case.unbiased_on_quadratic:
        tolerance = tolerance + 0.05 * true_gradient.abs().max()  # forward differences: O(eps) bias
    assert ((mean - true_gradient).abs() <= tolerance).all(), (mean, true_gradient, tolerance)
    # and the test can tell the true gradient from a wrong one
    assert ((mean + true_gradient).abs() > tolerance).any()


def test_global_rng_untouched(case: MethodCase) -> None:
    case.check_limits("test_global_rng_untouched")
    problem = Quadratic()
    optimizer = case.build([problem.w], **case.quadratic)
    torch.manual_seed(2024)
    before = torch.get_rng_state()
    for _ in range(3):
        optimizer.step(problem.loss)
    assert torch.equal(before, torch.get_rng_state())


def test_directions_do_not_depend_on_parameter_order(case: MethodCase) -> None:
    case.check_limits("test_directions_do_not_depend_on_parameter_order")
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(torch.randn(7))

    def run(order: list[str]) -> dict[str, torch.Tensor]:
        params = {"a": a.detach().clone().requires_grad_(), "b": b.detach().clone().requires_grad_()}
        optimizer = case.build([(name, params[name]) for name in order], **case.quadratic)
        for _ in range(4):
            optimizer.step(lambda: (params["a"] ** 2).sum() + (params["b"] ** 3).sum())
        return params

    forward, backward = run(["a", "b"]), run(["b", "a"])
    assert not torch.equal(forward["a"], a)  # it did train
    assert torch.equal(forward["a"], backward["a"])
    assert torch.equal(forward["b"], backward["b"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_dtype_preserved(case: MethodCase, dtype: torch.dtype) -> None:
    case.check_limits("test_dtype_preserved")
    problem = Quadratic(dtype=dtype)
    optimizer = case.build([problem.w], **dict(case.quadratic, eps=1e-2))
    for _ in range(5):
        loss = optimizer.step(problem.loss)
    assert problem.w.dtype == dtype
    assert loss.dtype == torch.float32
    assert problem.w.detach().abs().sum() > 0  # the update was not lost to rounding


def test_state_dict_round_trip_continues_identically(case: MethodCase) -> None:
    case.check_limits("test_state_dict_round_trip_continues_identically")
    steps = 7
    problem = MLPRegression()
    reference = case.build(problem.model.named_parameters(), seed=21, **case.mlp)
    resumed_model = copy.deepcopy(problem.model)
    for _ in range(2 * steps):
        reference.step(problem.loss)

    def resumed_loss() -> torch.Tensor:
        return torch.nn.functional.mse_loss(resumed_model(problem.x), problem.y)

    first = case.build(resumed_model.named_parameters(), seed=21, **case.mlp)
    for _ in range(steps):
        first.step(resumed_loss)
    state = copy.deepcopy(first.state_dict())
    second = case.build(resumed_model.named_parameters(), seed=999, **dict(case.mlp, lr=123.0))
    second.load_state_dict(state)
    for _ in range(steps):
        second.step(resumed_loss)
    for p, q in zip(problem.model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert second.step_count == reference.step_count == 2 * steps
    assert second.forward_passes == reference.forward_passes


def test_bad_arguments_raise(case: MethodCase) -> None:
    case.check_limits("test_bad_arguments_raise")
    w = torch.nn.Parameter(torch.zeros(3))
    options = dict(case.quadratic)
    with pytest.raises(ValueError, match="lr must be"):
        case.build([w], **dict(options, lr=-1.0))
    with pytest.raises(ValueError, match="eps must be"):
        case.build([w], **dict(options, eps=0.0))
    with pytest.raises(ValueError, match="eps must be"):
        case.build([w], **dict(options, eps=-1e-3))
    with pytest.raises(ValueError, match="empty parameter list"):
        case.build([], **options)
    optimizer = case.build([w], **options)
    with pytest.raises(ValueError, match="requires a closure"):
        optimizer.step()


def test_forward_passes_counted(case: MethodCase) -> None:
    case.check_limits("test_forward_passes_counted")
    problem = Quadratic()
    optimizer = case.build([problem.w], **case.quadratic)
    calls = 0

    def closure() -> torch.Tensor:
        nonlocal calls
        calls += 1
        return problem.loss()

    for _ in range(3):
        optimizer.step(closure)
    assert optimizer.forward_passes == calls == 3 * optimizer.estimator.forward_passes_per_step()


def test_nonfinite_loss_skips_update(case: MethodCase) -> None:
    case.check_limits("test_nonfinite_loss_skips_update")
    problem = Quadratic()
    optimizer = case.build([problem.w], **case.quadratic)
    optimizer.step(problem.loss)
    before = problem.w.detach().clone()
    loss = optimizer.step(lambda: problem.loss() * float("nan"))
    assert torch.isnan(loss)
    assert optimizer.nonfinite_steps == 1
    torch.testing.assert_close(problem.w.detach(), before, rtol=0, atol=1e-6)
    optimizer.step(problem.loss)  # and training goes on
    assert optimizer.nonfinite_steps == 1


def test_replay_of_the_records_rebuilds_the_weights(case: MethodCase) -> None:
    """A run is its seed log: replaying the step records onto the base weights gives the trained weights
    (or, for a method acting through forward passes a record does not hold, a clear refusal)."""
    case.check_limits("test_replay_of_the_records_rebuilds_the_weights")
    problem, base = MLPRegression(), MLPRegression()
    optimizer = case.build(problem.model.named_parameters(), seed=4, record_trajectory=True, **case.mlp)
    for step in range(8):
        optimizer.step((lambda: problem.loss() * float("nan")) if step == 3 else problem.loss)
    fresh = case.build(base.model.named_parameters(), seed=4, **case.mlp)
    if optimizer.not_replayable():
        with pytest.raises(ValueError, match="cannot replay this run"):
            zotune.replay(fresh, optimizer.trajectory)
        return
    zotune.replay(fresh, optimizer.trajectory)
    for p, q in zip(problem.model.parameters(), base.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p, q) for p, q in zip(problem.model.parameters(), MLPRegression().model.parameters()))


class _ProbeFailure(RuntimeError):
    pass


@pytest.mark.parametrize("failing_call", [1, 2])
def test_a_closure_that_raises_leaves_the_model_and_the_optimizer_as_they_were(case: MethodCase, failing_call: int) -> None:
    """Out of memory, Ctrl-C or a bad batch during a probe: the weights are put back before the exception
    leaves ``step`` (not left displaced by +-eps z), no state moves, and training continues as if the
    failed step had never been tried."""
    problem, twin = Quadratic(), Quadratic()
    optimizer = case.build([problem.w], **case.quadratic)
    reference = case.build([twin.w], **case.quadratic)
    for opt, prob in ((optimizer, problem), (reference, twin)):
        opt.step(prob.loss)
    before = problem.w.detach().clone()
    state = copy.deepcopy(optimizer.state_dict())
    calls = 0

    def failing() -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == failing_call:
            raise _ProbeFailure("boom")
        return problem.loss()

    with pytest.raises(_ProbeFailure):
        optimizer.step(failing)
    torch.testing.assert_close(problem.w.detach(), before, rtol=0, atol=1e-6)
    after = optimizer.state_dict()
    assert after["zo"]["step"] == state["zo"]["step"]
    torch.testing.assert_close(after["state"], state["state"], rtol=0, atol=0)
    for opt, prob in ((optimizer, problem), (reference, twin)):
        opt.step(prob.loss)
    torch.testing.assert_close(problem.w.detach(), twin.w.detach(), rtol=0, atol=1e-6)


def test_replaying_the_logged_losses_rebuilds_the_weights_bit_for_bit(case: MethodCase) -> None:
    """The seed log of a run (probe losses and hyperparameters per step) reproduces the trained weights
    exactly, dropped steps and stateful transforms included, with a learning rate that changed mid-run."""
    from zotune.core.replay import LoggedStep, replay_losses

    problem, base = MLPRegression(), MLPRegression()
    optimizer = case.build(problem.model.named_parameters(), seed=4, **case.mlp)
    log = []
    for step in range(8):
        if step == 5:
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
        optimizer.step((lambda: problem.loss() * float("nan")) if step == 3 else problem.loss)
        log.append(LoggedStep(step, tuple(optimizer.last_step_losses),
                              tuple(g["lr"] for g in optimizer.param_groups),
                              tuple(g["weight_decay"] for g in optimizer.param_groups)))
    fresh = case.build(base.model.named_parameters(), seed=4, **case.mlp)
    if optimizer.not_replayable():
        with pytest.raises(ValueError, match="cannot replay this run"):
            replay_losses(fresh, log)
        return
    assert replay_losses(fresh, log) == 8
    for p, q in zip(problem.model.parameters(), base.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(problem.model.parameters(), MLPRegression().model.parameters()))
