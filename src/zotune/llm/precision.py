"""Does a perturbation of size eps actually move half-precision weights?

Zeroth-order steps displace each trainable weight in place, ``w -> w + eps*z``, evaluate the loss and restore.
The displaced value is rounded back to the weight's dtype. A binary float with ``p`` bits of significand
precision (counting the implicit leading bit) has, for ``2**e <= |w| < 2**(e+1)``, a spacing (ulp) of
``2**(e - p + 1)`` between neighbouring values; ``p`` is 8 for bfloat16, 11 for float16, 24 for float32, 53 for
float64. Round-to-nearest maps ``w + d`` back to ``w`` whenever ``|d|`` is below half the gap to the next
representable value in the direction of ``d``. That gap is one ulp, except when ``|w|`` is an exact power of two
and ``d`` points towards zero: the spacing below a power of two is half an ulp. So an element moves when

    |eps * z| >= gap(w, sign z) / 2,   i.e.   eps >= gap(w, sign z) / (2 * |z|) =: threshold(w, z).

For bfloat16 a typical LLM weight ``|w| ~ 0.02`` has ulp ``2**-6 * 2**-7 ~ 1.2e-4``; a LayerNorm weight of 1.0 has
ulp ``2**-7 ~ 7.8e-3`` (and ``2**-8`` below it). With eps smaller than that a step leaves most weights where they
were and the loss difference ``f(w + eps z) - f(w - eps z)`` is rounding noise, not a directional derivative.

:func:`perturbation_check` measures this on a deterministic sample of elements; :func:`check_eps_for_dtype` turns
the measurement into a warning or a refusal with a suggested eps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch

__all__ = ["PerturbationCheck", "perturbation_check", "check_eps_for_dtype"]

_HALF = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class PerturbationCheck:
    """What a perturbation of size ``eps`` does to a sample of weights of one dtype.

    ``fraction_unchanged`` is measured: the sampled elements are displaced by ``eps*z`` (``z`` standard normal,
    computed in float32, or float64 for float64 weights, and rounded once to the weight dtype, as the samplers do)
    and compared with the original. ``eps_half`` and ``eps_90`` come from the threshold formula in the module
    docstring: the median and the 90th percentile of ``threshold(w, z)`` over the sample, i.e. the smallest eps
    that moves half, respectively 90%, of the sampled elements for these ``z``.
    """

    dtype: torch.dtype
    eps: float
    sampled: int  # elements examined (all of them when the parameters hold no more than ``sample``)
    total: int  # elements in the parameters of this dtype
    fraction_unchanged: float
    median_abs_weight: float
    eps_half: float
    eps_90: float

    @property
    def suggested_eps(self) -> float:
        """``eps_90`` rounded up to one significant digit: an eps that leaves at most ~10% of the weights unmoved."""
        return _round_up(self.eps_90)

    def message(self) -> str:
        """One line for a human: what fraction does not move, and which eps would."""
        name = str(self.dtype).removeprefix("torch.")
        return (
            f"{name}: {self.fraction_unchanged:.1%} of sampled weights do not change under eps={self.eps:.3g} "
            f"(w + eps*z rounds back to w; median |w|={self.median_abs_weight:.3g}); "
            f"half move at eps={self.eps_half:.2g}, use eps >= {self.suggested_eps:.0e} to move 90%"
        )


def perturbation_check(
    params: Iterable[tuple[str, torch.Tensor]], eps: float, *, sample: int = 65536, seed: int = 0
) -> PerturbationCheck:
    """Measure the fraction of weights that ``w + eps*z`` leaves unchanged in their own dtype.

    ``params`` are ``(name, tensor)`` pairs (e.g. ``model.named_parameters()``) of one floating dtype. When they
    hold more than ``sample`` elements, ``sample`` flat indices are drawn uniformly with replacement over all
    elements, so each tensor is sampled in proportion to its size; only the drawn elements are gathered (no
    parameter-sized copy). Otherwise every element is examined. Indices and ``z`` come from a local
    ``torch.Generator`` seeded with ``seed``, so the result is deterministic and the global RNG is untouched.
    Any dtype is accepted; only bfloat16 and float16 give non-trivial fractions at practical eps.
    """
    eps = float(eps)
    if not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number, got {eps}")
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise ValueError(f"sample must be a positive integer, got {sample!r}")
    tensors = _tensors(params)
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1:
        raise ValueError(f"parameters of one dtype expected, got {sorted(map(str, dtypes))}; check each dtype apart")
    dtype = tensors[0].dtype
    sizes = [t.numel() for t in tensors]
    total = sum(sizes)

    generator = torch.Generator().manual_seed(seed)
    if total <= sample:
        w = torch.cat([_gather(t, torch.arange(t.numel())) for t in tensors])
    else:
        flat = torch.randint(total, (sample,), generator=generator).sort().values
        ends = torch.tensor(sizes).cumsum(0)
        owner = torch.searchsorted(ends, flat, right=True)
        starts = ends - torch.tensor(sizes)
        w = torch.cat([_gather(t, flat[owner == i] - starts[i]) for i, t in enumerate(tensors)])
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    z = torch.randn(w.numel(), generator=generator, dtype=compute)

    moved = (w.to(compute) + eps * z).to(dtype) != w
    threshold = _gap(w, z) / (2 * z.double().abs())
    return PerturbationCheck(
        dtype=dtype,
        eps=eps,
        sampled=w.numel(),
        total=total,
        fraction_unchanged=1.0 - moved.double().mean().item(),
        median_abs_weight=w.double().abs().median().item(),
        eps_half=_smallest_moving(threshold, 0.5),
        eps_90=_smallest_moving(threshold, 0.9),
    )


def check_eps_for_dtype(
    params: Iterable[tuple[str, torch.Tensor]],
    eps: float,
    *,
    refuse_above: float = 0.9,
    warn_above: float = 0.1,
    sample: int = 65536,
    seed: int = 0,
) -> PerturbationCheck | None:
    """Warn, or refuse, when eps is too small to move the weights in their dtype.

    Parameters are grouped by dtype and each group is checked with :func:`perturbation_check`; the group with the
    largest unchanged fraction decides. Returns ``None`` when at most ``warn_above`` of its elements stay put;
    raises ``ValueError`` (one line, with a suggested eps) when more than ``refuse_above`` do; in between emits a
    ``UserWarning`` and returns the check. The suggested eps targets <= 10% unmoved, i.e. the default ``warn_above``.
    Note that a small group inside a big one (LayerNorm weights among matrices) is averaged away: check it apart.
    """
    if not 0.0 <= warn_above <= refuse_above <= 1.0:
        raise ValueError(f"need 0 <= warn_above <= refuse_above <= 1, got warn_above={warn_above}, "
                         f"refuse_above={refuse_above}")
    groups: dict[torch.dtype, list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in params:
        groups.setdefault(tensor.dtype, []).append((name, tensor))
    if not groups:
        raise ValueError("no parameters to check")
    checks = [perturbation_check(group, eps, sample=sample, seed=seed) for group in groups.values()]
    worst = max(checks, key=lambda c: c.fraction_unchanged)
    if worst.fraction_unchanged > refuse_above:
        raise ValueError(worst.message())
    if worst.fraction_unchanged > warn_above:
        warnings.warn(worst.message(), UserWarning, stacklevel=2)
        return worst
    return None


def _tensors(params: Iterable[tuple[str, torch.Tensor]]) -> list[torch.Tensor]:
    tensors = []
    for item in params:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor)):
            raise ValueError(f"expected (name, tensor) pairs, got {type(item).__name__}")
        name, tensor = item
        if not tensor.is_floating_point():
            raise ValueError(f"parameter {name!r} is {tensor.dtype}, not floating point")
        if tensor.numel() > 0:
            tensors.append(tensor.detach())
    if not tensors:
        raise ValueError("no parameter elements to check")
    return tensors


def _gather(tensor: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
    """Elements at flat (row-major, logical) indices ``local`` of ``tensor``, on the CPU, without copying it."""
    local = local.to(tensor.device)
    if tensor.is_contiguous():
        return tensor.view(-1)[local].cpu()
    return tensor[torch.unravel_index(local, tensor.shape)].cpu()


def _gap(w: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Distance (float64) from each ``w`` to its neighbour in ``w``'s dtype in the direction of ``z``."""
    info = torch.finfo(w.dtype)
    smallest = info.tiny * info.eps  # spacing among subnormals (and at zero)
    wd = w.double()
    mantissa, exponent = torch.frexp(wd)  # |w| = |mantissa| * 2**exponent, |mantissa| in [0.5, 1)
    ulp = torch.ldexp(torch.full_like(wd, info.eps), exponent - 1)  # 2**(e - p + 1) with 2**e <= |w|
    towards_zero = (mantissa.abs() == 0.5) & (torch.sign(wd) != torch.sign(z.double()))
    ulp = torch.where(towards_zero, ulp / 2, ulp)
    return ulp.clamp(min=smallest)


def _smallest_moving(threshold: torch.Tensor, fraction: float) -> float:
    """Smallest eps with at least ``fraction`` of the thresholds <= eps: the ceil(fraction*n)-th smallest."""
    k = max(1, math.ceil(fraction * threshold.numel()))
    return threshold.kthvalue(k).values.item()


def _round_up(x: float) -> float:
    """Round a positive number up to one significant digit (3.2e-4 -> 4e-4)."""
    scale = 10.0 ** math.floor(math.log10(x))
    return math.ceil(x / scale * (1 - 1e-12)) * scale
