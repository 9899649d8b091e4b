"""perturbation_check / check_eps_for_dtype: does w + eps*z move half-precision weights at all?

Every sample-based number is compared with a brute-force count over all elements of the tensor, with z drawn
independently of the checker's generator.
"""

import re
import warnings

import pytest
import torch

from zotune.llm.precision import check_eps_for_dtype, perturbation_check


def llm_like(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    """Weights ~ N(0, 0.02**2), the usual initialisation scale of LLM linear layers."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 0.02).to(dtype)


def brute_unchanged(w: torch.Tensor, eps: float, seed: int = 12345) -> float:
    """Exhaustive: the fraction of ALL elements with (w + eps*z) rounded to w's dtype equal to w."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(w.shape, generator=g)
    compute = torch.float64 if w.dtype == torch.float64 else torch.float32
    moved = (w.to(compute) + eps * z.to(compute)).to(w.dtype) != w
    return 1.0 - moved.double().mean().item()


def suggested_from(message: str) -> float:
    found = re.search(r"use eps >= ([0-9.]+e[-+]?[0-9]+)", message)
    assert found, message
    return float(found.group(1))


BIG = (512, 512)  # 262144 elements > the default sample of 65536, so the sampled path is exercised


def test_bf16_llm_weights_at_mezo_eps_sample_agrees_with_exhaustive_count():
    w = llm_like(BIG, torch.bfloat16)
    check = perturbation_check([("w", w)], 1e-3)
    exhaustive = brute_unchanged(w, 1e-3)
    assert check.sampled == 65536 and check.total == w.numel()
    assert 0.01 < exhaustive < 0.1  # measured: ~3.8% of typical bf16 weights do not move at eps=1e-3
    assert check.fraction_unchanged == pytest.approx(exhaustive, abs=0.005)
    assert check.dtype == torch.bfloat16 and check.median_abs_weight == pytest.approx(0.0135, rel=0.05)


@pytest.mark.parametrize("eps", [1e-5, 1e-4, 3e-4])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sampled_fraction_tracks_exhaustive_count_across_eps(dtype, eps):
    w = llm_like(BIG, dtype)
    assert perturbation_check([("w", w)], eps).fraction_unchanged == pytest.approx(brute_unchanged(w, eps), abs=0.01)


def test_float32_at_mezo_eps_nothing_flagged():
    w = llm_like(BIG, torch.float32)
    check = perturbation_check([("w", w)], 1e-3)
    assert check.fraction_unchanged < 1e-3 and brute_unchanged(w, 1e-3) < 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_eps_for_dtype([("w", w)], 1e-3) is None


def test_bf16_tiny_eps_refused_and_the_suggested_eps_passes():
    w = llm_like(BIG, torch.bfloat16)
    assert brute_unchanged(w, 1e-6) > 0.9
    with pytest.raises(ValueError) as raised:
        check_eps_for_dtype([("w", w)], 1e-6)
    message = str(raised.value)
    assert "\n" not in message and "bfloat16" in message
    suggested = suggested_from(message)
    assert suggested > 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_eps_for_dtype([("w", w)], suggested) is None
    assert brute_unchanged(w, suggested) <= 0.1  # it moves >= 90% (so certainly half) of all elements


def test_eps_half_moves_half_of_all_elements_by_brute_force():
    for dtype in (torch.bfloat16, torch.float16):
        w = llm_like(BIG, dtype)
        check = perturbation_check([("w", w)], 1e-3)
        assert 1.0 - brute_unchanged(w, check.eps_half) == pytest.approx(0.5, abs=0.01)
        assert 1.0 - brute_unchanged(w, check.eps_90) == pytest.approx(0.9, abs=0.01)
        assert 1.0 - brute_unchanged(w, check.suggested_eps) >= 0.9


def test_fp16_needs_eight_times_smaller_eps_than_bf16():
    # 11 vs 8 bits of significand precision: the ulp at the same |w| is 2**3 = 8 times smaller
    half = {dt: perturbation_check([("w", llm_like(BIG, dt))], 1e-3).eps_half for dt in (torch.bfloat16, torch.float16)}
    assert half[torch.bfloat16] / half[torch.float16] == pytest.approx(8.0, rel=0.1)


def test_layernorm_ones_in_bf16_mostly_stuck_at_mezo_eps():
    ones = torch.ones(65536, dtype=torch.bfloat16)  # not more than `sample`: every element is examined
    check = perturbation_check([("ln.weight", ones)], 1e-3)
    assert check.sampled == check.total == 65536
    assert check.fraction_unchanged == pytest.approx(brute_unchanged(ones, 1e-3), abs=0.01)
    assert check.fraction_unchanged > 0.9
    # 1.0 is a power of two: the gap above is 2**-7, below only 2**-8, so downward moves need half the eps
    assert 2**-9 < check.eps_half < 2**-7
    assert 1.0 - brute_unchanged(ones, check.eps_half) == pytest.approx(0.5, abs=0.01)
    assert 1.0 - brute_unchanged(ones, check.eps_90) == pytest.approx(0.9, abs=0.01)


def test_warns_between_thresholds_and_returns_the_check():
    ones = torch.ones(4096, dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match="bfloat16"):
        check = check_eps_for_dtype([("ln.weight", ones)], 1e-2)
    assert check is not None and 0.1 < check.fraction_unchanged < 0.9


def test_sampling_weights_tensors_by_size():
    big, small = llm_like(BIG, torch.bfloat16), torch.ones(65536, dtype=torch.bfloat16)
    expected = (big.numel() * brute_unchanged(big, 1e-3) + small.numel() * brute_unchanged(small, 1e-3)) / (
        big.numel() + small.numel()
    )
    check = perturbation_check([("big", big), ("small", small)], 1e-3)
    assert check.total == big.numel() + small.numel()
    assert check.fraction_unchanged == pytest.approx(expected, abs=0.01)
    assert expected > 0.2  # the ones (20% of elements, ~98% stuck) are visible in the mix


def test_deterministic_and_noncontiguous_views_read_logical_elements():
    w = llm_like(BIG, torch.bfloat16)
    assert perturbation_check([("w", w)], 1e-4, seed=3) == perturbation_check([("w", w)], 1e-4, seed=3)
    assert perturbation_check([("w", w.t())], 1e-4) == perturbation_check([("w", w.t().contiguous())], 1e-4)
    other = perturbation_check([("w", w)], 1e-4, seed=4)
    assert other != perturbation_check([("w", w)], 1e-4, seed=3)
    assert other.fraction_unchanged == pytest.approx(brute_unchanged(w, 1e-4), abs=0.01)


def test_mixed_dtypes_the_worst_group_decides():
    params = [("fp32", llm_like(BIG, torch.float32)), ("bf16", llm_like((256, 256), torch.bfloat16))]
    with pytest.raises(ValueError, match="parameters of one dtype"):
        perturbation_check(params, 1e-6)
    with pytest.raises(ValueError, match="bfloat16"):
        check_eps_for_dtype(params, 1e-6)


@pytest.mark.parametrize("eps", [0.0, -1e-3, float("nan"), float("inf")])
def test_rejects_bad_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        perturbation_check([("w", torch.ones(4))], eps)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        perturbation_check([], 1e-3)
    with pytest.raises(ValueError, match="floating"):
        perturbation_check([("i", torch.ones(4, dtype=torch.int64))], 1e-3)
    with pytest.raises(ValueError, match="sample"):
        perturbation_check([("w", torch.ones(4))], 1e-3, sample=0)
    with pytest.raises(ValueError, match="warn_above"):
        check_eps_for_dtype([("w", torch.ones(4))], 1e-3, warn_above=0.5, refuse_above=0.2)
    with pytest.raises(ValueError):
        check_eps_for_dtype([], 1e-3)
