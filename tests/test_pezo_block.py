"""``pezo-block`` (zotune's variant of PeZO, formerly ``pezo``), its pool sampler: regeneration, covariance
and aliasing, exact draw counts, bias/variance vs pool size. The authors' PeZO (``zotune.pezo``) is tested
in test_pezo_rng.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import zotune
import zotune.algorithms.pezo_block as pezo_module
from problems import MLPRegression
from zotune.algorithms.pezo_block import PeZOBlockSampler
from zotune.core.samplers import Direction

MAPS = ["block-rotate", "rotate", "hash"]


def _covariance(sampler: PeZOBlockSampler, dim: int, samples: int) -> torch.Tensor:
    """Empirical E[z z^T] over ``samples`` steps (fresh pool and offsets each step)."""
    z = torch.stack([sampler.sample(dim, Direction(5, step, 0, 1)) for step in range(samples)]).double()
    return z.T @ z / samples


# --- the fast path is the reference, bit for bit ----------------------------------------------------------


@pytest.mark.parametrize("index_map", MAPS)
@pytest.mark.parametrize("numel", [1, 15, 16, 17, 100, 16 * 1024 + 3])
def test_add_equals_sample(index_map: str, numel: int) -> None:
    sampler = PeZOBlockSampler(pool_size=16 if numel < 1000 else 1024, index_map=index_map)
    d = Direction(1, 2, 0, 3)
    z = sampler.sample(numel, d)
    x = torch.zeros(numel)
    sampler.add_(x, d, alpha=1.0)
    assert torch.equal(x, z)
    y = torch.linspace(-1, 1, numel)
    expected = 0.9 * y + 0.25 * z
    sampler.add_(y, d, alpha=0.25, decay=0.9)
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_add_rounds_once_in_low_precision(dtype: torch.dtype) -> None:
    sampler = PeZOBlockSampler(pool_size=64)
    d = Direction(0, 0, 0, 0)
    x = torch.zeros(300, dtype=dtype)
    sampler.add_(x, d, alpha=0.5)
    assert x.dtype == dtype
    assert torch.equal(x, (0.5 * sampler.sample(300, d).double()).to(dtype))


@pytest.mark.parametrize("index_map", MAPS)
def test_regenerations_within_a_step_are_bit_identical(index_map: str) -> None:
    """The optimizer's three passes (+eps, -2 eps, restore + update) see the same z, whatever is cached."""
    w = torch.nn.Parameter(torch.zeros(200))
    optimizer = zotune.pezo_block([w], lr=0.0, eps=2.0**-8, pool_size=32, index_map=index_map, seed=4)
    seen: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        seen.append(w.detach().clone())
        return (w * torch.arange(200.0)).sum()

    for _ in range(3):
        seen.clear()
        optimizer.step(closure)
        step = optimizer.step_count - 1
        z = optimizer.sampler.sample(200, optimizer.direction(0, 0, step))
        assert torch.equal(seen[0], 2.0**-8 * z)  # pass 1: +eps z, regenerated with a cold cache
        assert torch.equal(seen[1], -seen[0])  # pass 2: -2 eps z, from the cache
        assert torch.equal(w.detach(), torch.zeros(200))  # pass 3 restored exactly (lr = 0)
    # a fresh sampler (empty cache) and one that has moved on regenerate the same numbers
    d = Direction(4, 1, 0, 0)
    assert torch.equal(PeZOBlockSampler(pool_size=32, index_map=index_map).sample(200, d), optimizer.sampler.sample(200, d))
    x = torch.zeros(200)
    optimizer.sampler.add_(x, d, 1.0)
    assert torch.equal(x, optimizer.sampler.sample(200, d))


def test_directions_are_independent_across_steps_queries_and_tensors() -> None:
    sampler = PeZOBlockSampler(pool_size=1024)
    a = sampler.sample(4096, Direction(0, 7, 0, 1))
    for other in [Direction(0, 8, 0, 1), Direction(0, 7, 1, 1), Direction(0, 7, 0, 2), Direction(1, 7, 0, 1)]:
        b = sampler.sample(4096, other)
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.1
    # with a pool kept for K steps, steps still differ (new offsets), and the pool is the same
    kept = PeZOBlockSampler(pool_size=1024, refresh_every=4)
    assert torch.equal(kept.make_pool(Direction(0, 4, 0, 1)), kept.make_pool(Direction(0, 7, 0, 9)))
    assert not torch.equal(kept.make_pool(Direction(0, 4, 0, 1)), kept.make_pool(Direction(0, 8, 0, 1)))
    assert not torch.equal(kept.sample(4096, Direction(0, 4, 0, 1)), kept.sample(4096, Direction(0, 5, 0, 1)))


# --- moments, covariance and aliasing --------------------------------------------------------------------


@pytest.mark.parametrize("scaling", ["adaptive", "fixed"])
def test_pool_scaling(scaling: str) -> None:
    sampler = PeZOBlockSampler(pool_size=1 << 14, scaling=scaling)
    pool = sampler.make_pool(Direction(0, 0, 0, 0)).double()
    mean_square = pool.square().mean().item()
    if scaling == "adaptive":
        assert mean_square == pytest.approx(1.0, abs=1e-6)  # exactly a Gaussian block's second moment
        assert pool.abs().max().item() <= math.sqrt(3) / math.sqrt(mean_square) + 0.1
    else:
        assert pool.abs().max().item() <= math.sqrt(3)
        assert mean_square == pytest.approx(1.0, abs=5 * math.sqrt(0.8 / (1 << 14)))  # Var(U^2) = 4/5
    assert (pool**4).mean().item() == pytest.approx(1.8, abs=0.06)  # uniform's kurtosis, not 3


def test_identity_covariance_when_the_pool_covers_the_tensor() -> None:
    """n >= d: every element reads a different pool entry, so E[z z^T] = I (no aliasing at all)."""
    samples = 20_000
    cov = _covariance(PeZOBlockSampler(pool_size=16), 16, samples)
    off = cov - torch.diag(torch.diag(cov))
    assert torch.allclose(torch.diag(cov), torch.ones(16, dtype=torch.float64), atol=5 * math.sqrt(0.8 / samples))
    assert off.abs().max().item() < 5 / math.sqrt(samples)


@pytest.mark.parametrize("pool_size", [8, 32])
def test_block_rotate_covariance_is_identity_at_every_pool_size(pool_size: int) -> None:
    """d = 64 > n: inside a block z holds distinct pool entries (uncorrelated), and blocks carry
    independent signs, so E[z z^T] = I although each pool entry is used d / n times per step."""
    dim, samples = 64, 20_000
    cov = _covariance(PeZOBlockSampler(pool_size=pool_size), dim, samples)
    block = torch.arange(dim) // pool_size
    same_block = (block[:, None] == block[None, :]) & ~torch.eye(dim, dtype=torch.bool)
    other_block = block[:, None] != block[None, :]
    assert torch.diag(cov).mean().item() == pytest.approx(1.0, abs=0.01)
    # the mean over ~d^2 pairs of one sample has standard deviation <= sqrt(2); 5 standard errors
    tolerance = 5 * math.sqrt(2.0 / samples)
    assert cov[same_block].mean().item() == pytest.approx(0.0, abs=tolerance)
    assert cov[other_block].mean().item() == pytest.approx(0.0, abs=tolerance)
    assert (cov - torch.diag(torch.diag(cov))).abs().max().item() < 6 / math.sqrt(samples)


def test_block_signs_remove_the_blind_direction() -> None:
    """Unsigned rotations would give every full block the same sum, sum(P), in every step."""
    sampler = PeZOBlockSampler(pool_size=8)
    sums = torch.stack([sampler.sample(16, Direction(0, step, 0, 0)).view(2, 8).sum(1) for step in range(50)])
    assert (sums[:, 0] - sums[:, 1]).abs().max().item() > 0.5


def test_off_diagonal_aliasing_vs_pool_size() -> None:
    """The mean off-diagonal of E[z z^T] for pool sizes below and at the dimension d = 64."""
    dim, samples = 64, 6_000
    measured: dict[str, list[float]] = {}
    for index_map in MAPS:
        for n in (8, 64):
            cov = _covariance(PeZOBlockSampler(pool_size=n, index_map=index_map), dim, samples)
            measured.setdefault(index_map, []).append((cov.sum() - cov.trace()).item() / (dim * (dim - 1)))
    tolerance = 5 * math.sqrt(2.0 / samples)
    # rotate (one offset per tensor): z_j = z_{j+n} always, so the pairs j = i mod n give exactly 1
    assert measured["rotate"][0] == pytest.approx((dim // 8 - 1) / (dim - 1), abs=tolerance)
    # hash: a collision (probability ~1/n per pair) gives P_k^2, mean 1
    assert 0.3 / 8 < measured["hash"][0] < 2.5 / 8
    for index_map in ("rotate", "hash"):
        assert measured[index_map][0] > measured[index_map][1] + 0.03, measured
    # block-rotate: none at any pool size
    assert measured["block-rotate"][0] == pytest.approx(0.0, abs=tolerance)
    assert measured["block-rotate"][1] == pytest.approx(0.0, abs=tolerance)


# --- counting random numbers ------------------------------------------------------------------------------


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 15), torch.nn.Tanh(), torch.nn.Linear(15, 1))  # 300+15+15+1


@pytest.mark.parametrize("refresh_every", [1, 3])
@pytest.mark.parametrize("index_map", MAPS)
def test_draws_are_counted_exactly(refresh_every: int, index_map: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-step count equals the numbers the sampler really generated, and the formula
    n_queries * (n on refresh steps + index-map numbers)."""
    generated = 0
    real_counter_bits = pezo_module.counter_bits

    def counting_counter_bits(start, numel, key, device):  # type: ignore[no-untyped-def]
        nonlocal generated
        generated += numel
        return real_counter_bits(start, numel, key, device)

    monkeypatch.setattr(pezo_module, "counter_bits", counting_counter_bits)
    model = _model()
    x, y = torch.randn(8, 20), torch.randn(8, 1)
    optimizer = zotune.pezo_block(
        model.named_parameters(), lr=1e-3, pool_size=64, refresh_every=refresh_every, index_map=index_map, n_queries=2
    )
    numels = [p.numel() for p in model.parameters()]
    total = 0
    for step in range(7):
        before = generated
        optimizer.step(lambda: torch.nn.functional.mse_loss(model(x), y))
        expected = optimizer.sampler.numbers_per_step(numels, step, n_queries=2)
        assert optimizer.last_step_random_numbers == expected
        if index_map != "hash":  # the hash's (a, b) come from Python's splitmix64, not counter_bits
            assert generated - before == expected
        total += expected
    assert optimizer.random_numbers_drawn == total
    assert optimizer.state_dict()["zo"]["random_numbers_drawn"] == total
    # block-rotate on tensors of 300, 15, 15, 1 elements with n = 64: 5 + 1 + 1 + 1 offsets per query
    if index_map == "block-rotate":
        assert optimizer.sampler.numbers_per_step(numels, 0, n_queries=2) == 2 * (64 + 8)
        assert optimizer.sampler.numbers_per_step(numels, 1, n_queries=2) == (2 * 8 if refresh_every > 1 else 2 * 72)


def test_pezo_draws_a_tiny_fraction_of_mezo() -> None:
    """On a 1M-parameter model: MeZO draws 3 d per step (one regeneration per pass), PeZO n + offsets."""
    params = [torch.nn.Parameter(torch.zeros(1000, 1000)), torch.nn.Parameter(torch.zeros(1000))]

    def closure() -> torch.Tensor:
        return params[0].sum() + params[1].sum()

    mezo, block = zotune.mezo(params, lr=0.0), zotune.pezo_block(params, lr=0.0, pool_size=1 << 12)
    mezo.step(closure)
    block.step(closure)
    d = 1_001_000
    assert mezo.last_step_random_numbers == 3 * d
    assert block.last_step_random_numbers == 4096 + 245 + 1  # ceil(10^6 / 4096) + 1 offsets
    assert block.last_step_random_numbers < 0.005 * d


# --- the estimator on a quadratic: bias and variance vs pool size -----------------------------------------


def _estimates(optimizer: zotune.ZOOptimizer, w: torch.nn.Parameter, a: torch.Tensor, t: torch.Tensor, samples: int):  # type: ignore[no-untyped-def]
    """Mean of g_hat, E||g_hat||^2 and each coordinate's standard error, over ``samples`` steps from one
    point (lr = 1, so theta_before - theta_after is g_hat)."""
    start = w.detach().clone()
    total = torch.zeros_like(start)
    square = torch.zeros_like(start)
    for _ in range(samples):
        optimizer.step(lambda: 0.5 * (a * (w - t) ** 2).sum())
        g_hat = start - w.detach()
        total += g_hat
        square += g_hat.square()
        with torch.no_grad():
            w.copy_(start)
    mean = total / samples
    stderr = ((square / samples - mean.square()).clamp_min(0) / samples).sqrt()
    return mean, square.sum().item() / samples, stderr


def _quadratic(dim: int):  # type: ignore[no-untyped-def]
    a = torch.linspace(1.0, 2.0, dim, dtype=torch.float64)
    t = -torch.ones(dim, dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
    return a, t, w, a * (w.detach() - t)  # the gradient is all positive: aliased terms add up


def test_hash_bias_and_variance_fall_as_the_pool_grows() -> None:
    """Hash collisions alias gradient components: bias and E||g_hat||^2 shrink as n grows past d = 64."""
    dim, samples = 64, 1500
    a, t, w, g = _quadratic(dim)
    results = {}
    for n in (4, 16, 256):
        optimizer = zotune.pezo_block([w], lr=1.0, eps=1e-3, pool_size=n, index_map="hash", seed=n)
        mean, second_moment, stderr = _estimates(optimizer, w, a, t, samples)
        results[n] = ((mean - g).norm().item(), second_moment)
    (bias4, var4), (bias16, var16), (bias256, var256) = results[4], results[16], results[256]
    assert bias4 > bias16 > bias256
    assert var4 > var16 > var256
    assert bias4 > 3 * bias256


@pytest.mark.parametrize("pool_size", [4, 16, 64])
def test_block_rotate_estimator_is_unbiased_at_every_pool_size(pool_size: int) -> None:
    """E[g_hat] = g and E||g_hat||^2 = d |g|^2 (adaptive scaling fixes ||z||^2 = d), even with n = d / 16."""
    dim, samples = 64, 1500
    a, t, w, g = _quadratic(dim)
    optimizer = zotune.pezo_block([w], lr=1.0, eps=1e-3, pool_size=pool_size, seed=pool_size)
    mean, second_moment, stderr = _estimates(optimizer, w, a, t, samples)
    assert ((mean - g).abs() < 5 * stderr).all()
    assert ((mean + g).abs() > 5 * stderr).any()  # the test can tell g from a wrong answer
    assert second_moment == pytest.approx(dim * g.square().sum().item(), rel=0.15)


def test_rotate_map_bias_is_the_periodic_alias_sum() -> None:
    """One offset per tensor: E[g_hat_i] = sum_{j = i mod n} g_j, the fixed bias pezo.md warns about."""
    dim, n, samples = 32, 8, 1500
    a = torch.ones(dim, dtype=torch.float64)
    t = -torch.linspace(0.5, 1.5, dim, dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(dim, dtype=torch.float64))
    g = a * (w.detach() - t)
    optimizer = zotune.pezo_block([w], lr=1.0, eps=1e-3, pool_size=n, index_map="rotate", seed=1)
    mean, _, stderr = _estimates(optimizer, w, a, t, samples)
    aliased = g.view(dim // n, n).sum(0).repeat(dim // n)
    assert ((mean - aliased).abs() < 5 * stderr).all()
    assert ((mean - g).abs() > 5 * stderr).all()  # and it is far from the true gradient


# --- composition, checkpoints, arguments ------------------------------------------------------------------


def test_build_optimizer_and_sampler_registry() -> None:
    w = torch.nn.Parameter(torch.zeros(5))
    optimizer = zotune.build_optimizer("pezo-block", [w], lr=0.1, pool_size=8, refresh_every=2)
    assert isinstance(optimizer.sampler, PeZOBlockSampler)
    assert optimizer.sampler.config() == dict(
        pool_size=8, refresh_every=2, index_map="block-rotate", scaling="adaptive", distribution="uniform"
    )
    assert "pezo-block" in zotune.available_methods()
    assert isinstance(zotune.make_sampler("pezo-block", pool_size=32), PeZOBlockSampler)
    assert isinstance(zotune.mezo([w], sampler=PeZOBlockSampler(pool_size=8)).sampler, PeZOBlockSampler)


@pytest.mark.parametrize("other", ["kerzoo-unbiased", "dizo"])
def test_composes_with_other_methods(other: str) -> None:
    problem = MLPRegression()
    extra = dict(projected="all", lr_projection=0.2) if other == "dizo" else {}
    optimizer = zotune.build_optimizer(
        f"{other}+pezo-block", problem.model.named_parameters(), lr=1e-2, eps=1e-3, pool_size=16, **extra
    )
    assert isinstance(optimizer.sampler, PeZOBlockSampler)
    start = problem.loss().item()
    for _ in range(300):
        optimizer.step(problem.loss)
    assert problem.loss().item() < 0.5 * start


def test_resume_in_the_middle_of_a_refresh_period() -> None:
    problem = MLPRegression()
    twin = copy.deepcopy(problem.model)
    reference = zotune.pezo_block(problem.model.named_parameters(), lr=1e-2, pool_size=16, refresh_every=3, seed=2)
    for _ in range(8):
        reference.step(problem.loss)

    def twin_loss() -> torch.Tensor:
        return torch.nn.functional.mse_loss(twin(problem.x), problem.y)

    first = zotune.pezo_block(twin.named_parameters(), lr=1e-2, pool_size=16, refresh_every=3, seed=2)
    for _ in range(4):  # stop at step 4: inside the period of steps 3, 4, 5
        first.step(twin_loss)
    second = zotune.pezo_block(twin.named_parameters(), lr=1e-2, pool_size=16, refresh_every=3, seed=2)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    for _ in range(4):
        second.step(twin_loss)
    for p, q in zip(problem.model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    # a resume with other pool options would silently change every direction: refused. The optimizer now
    # compares every component's config before anything is loaded ("built differently"); the sampler's own
    # check still refuses a mismatched sampler state on its own
    with pytest.raises(ValueError, match="built differently.*pool_size"):
        zotune.pezo_block(twin.named_parameters(), pool_size=32, refresh_every=3).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="PeZO options"):
        PeZOBlockSampler(pool_size=32, refresh_every=3).load_state_dict(first.sampler.state_dict())


def test_bad_arguments() -> None:
    w = torch.nn.Parameter(torch.zeros(3))
    for options, message in [
        (dict(pool_size=100), "power of two"),
        (dict(pool_size=1), "power of two"),
        (dict(pool_size=2.0), "power of two"),
        (dict(refresh_every=0), "refresh_every"),
        (dict(index_map="lfsr"), "index_map"),
        (dict(scaling="sqrt3"), "scaling"),
        (dict(distribution="cauchy"), "distribution"),
    ]:
        with pytest.raises(ValueError, match=message):
            zotune.pezo_block([w], **options)
    with pytest.raises(ValueError, match="provides the sampler"):
        zotune.build_optimizer("pezo-block", [w], sampler="uniform")
    with pytest.raises(ValueError, match="unknown option"):
        zotune.build_optimizer("pezo-block", [w], pool=8)
