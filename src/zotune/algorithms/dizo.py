"""DiZO (Tan et al., 2025, arXiv 2502.03304): divergence-driven layer-wise projection, searched with
forward passes only.

Plain MeZO steps move every tensor's cumulative displacement from the pretrained weights at about the same
rate. DiZO keeps the MeZO steps and, every ``interval`` (kappa) updates, rescales the displacement of each
tensor l in a set S to a norm gamma_l found by a small zeroth-order search. With theta0 the anchor (the
weights when the optimizer was built), Delta_l = theta_l - theta0_l and d_l = ||Delta_l||_F:

    gamma_l <- d_l                                          (re-initialised every cycle: ratio 1)
    repeat J times, each with its own batch B_j:
        zeta_l ~ N(0, 1) per tensor, clipped to +-(tau / eps_p) d_l
        L+ = L(theta0 + (gamma + eps_p zeta) / d * Delta; B_j)
        L- = L(theta0 + (gamma - eps_p zeta) / d * Delta; B_j)
        h = (L+ - L-) / (2 eps_p)                           (one scalar shared by all tensors)
        gamma_l <- clip(gamma_l - eta_p d_l h zeta_l, (1 - tau) d_l, (1 + tau) d_l)
    theta_l <- theta0_l + (gamma_l / d_l) Delta_l           (applied: the next MeZO steps start here)

So each tensor keeps its direction from theta0 and gets a length of its own within [1 - tau, 1 + tau]
times its current length. This is the ZO-gamma variant (``--enhanced zo``) exactly as the official code
runs it (dizo.md §3); the FO-gamma variant (§4) is not implemented (it is not memory-efficient). Defaults
are the official code's: kappa = 50, J = 10, eps_p = 0.1, eta_p = 2.0, tau = 0.2; S = the key and value
projection weights of every attention block (the paper's summaries say query and value: ``"qv"``), or
every LoRA tensor when a LoRA adapter is trained.

Differences from the official code, each on purpose:

* **S is found from the module structure** (:mod:`zotune.algorithms.layer_selection`), so Llama, Gemma
  and Qwen work (the official code silently projects nothing on Llama, §9); an empty S raises.
* **Probes are written from saved quantities**: the tensors of S are copied once per cycle and every probe
  is computed as theta0 + rho Delta from the anchor and that copy, in float32 or better; after the search
  the copy is written back, so the probes leave the weights bit for bit as they were. The official code
  multiplies and then divides the displacement in place, which drifts in fp16 (§9, §10.2).
* **Its own randomness**: zeta comes from counter-based keys ``mix(seed, STREAM_AUX, DIZO, step, j,
  parameter)``, not from the global RNG right after MeZO's seed. MeZO's directions are keyed by
  (seed, step, query, parameter) and never see DiZO, so switching DiZO on changes no z.
* **Its own batches**: the official code draws a fresh batch of 16 from a second iterator for each search
  iteration. Here the search asks for the runner's generic ``fresh_closure(step, j)`` (see
  :mod:`zotune.methods`: any component may request it; ``zotune train`` provides one that draws batches
  from a stream of their own, :func:`zotune.train.loop.fresh_batch_indices`), or an explicit ``search_closure(step, j)``.
  Without either it reuses the step's closure, i.e. the batch of the step that ended the cycle.
* **Not replayable**: the projection acts through forward passes a step record does not hold, so
  :func:`zotune.core.replay.replay` refuses an optimizer with DiZO in it.
* A probe pair with a non-finite loss is skipped (counted in ``skipped_iterations``) instead of
  poisoning gamma.

Cost: 2 forward passes per MeZO step plus 2 J per cycle (added to ``optimizer.forward_passes``): +20%
with the defaults. Memory: the anchor holds a copy of S (**parameter-sized state**: for k/v about 16% of
an OPT model, less with grouped-query attention, e.g. 6% of SmolLM2-135M's non-embedding weights;
``anchor_device="cpu"`` keeps it off the accelerator), and during a cycle a second, transient copy of S
(on the same device as the anchor) holds the weights being searched.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import torch

from zotune.algorithms.layer_selection import PRESETS, select_projection_targets
from zotune.core.devices import wide_float
from zotune.core.seeds import STREAM_AUX, mix, unit_uniform
from zotune.core.transforms import Transform
from zotune.methods import Component, Parts, Setup, compose, register_component

if TYPE_CHECKING:  # pragma: no cover
    from zotune.core.optimizer import ZOOptimizer

__all__ = [
    "DIZO",
    "DiZOProjection",
    "displacement_norm",
    "dizo",
    "dizo_transform",
    "interpolate_",
]

Closure = Callable[[], Any]
SearchClosure = Callable[[int, int], Closure]
Projected = Union[str, Callable[[str, torch.Tensor], bool], Iterable[Any]]

# Tag inside STREAM_AUX so DiZO's keys never coincide with another component's auxiliary draws.
_DIZO_TAG = 0xD120
_KEY_ZETA = 0
_CHUNK = 1 << 22  # elements per chunk of float32/float64 work space when writing a probe


@dataclass
class _Layer:
    """One projected tensor: its name, the live parameter, its stable id and the anchor theta0."""

    name: str
    param: torch.Tensor
    param_id: int
    anchor: torch.Tensor


def _standard_normal(key: int) -> float:
    """N(0, 1) from a key (Box-Muller on two counter-based uniforms)."""
    u1 = 1.0 - unit_uniform(mix(key, 0))  # in (0, 1]: the log is finite
    u2 = unit_uniform(mix(key, 1))
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _work_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    # float32 is exact enough for half-precision weights; float32 weights get float64 so that a ratio
    # of 1 reproduces them exactly (theta0 + (theta - theta0) rounds back to theta), except on MPS (no float64)
    return wide_float(device) if dtype in (torch.float32, torch.float64) else torch.float32


@torch.no_grad()
def interpolate_(dest: torch.Tensor, anchor: torch.Tensor, end: torch.Tensor, ratio: float) -> None:
    """``dest <- anchor + ratio * (end - anchor)`` in place, computed in float32 or better with one rounding
    to ``dest``'s dtype; ``anchor`` and ``end`` may live on another device (e.g. the CPU). This is the
    projection theta0 + rho * Delta; ``dest`` may be ``end`` itself."""
    if dest.shape != anchor.shape or dest.shape != end.shape:
        raise ValueError(f"shape mismatch: {tuple(dest.shape)}, {tuple(anchor.shape)}, {tuple(end.shape)}")
    out = dest.detach()
    flat = out.view(-1) if out.is_contiguous() else out.contiguous().view(-1)
    a_flat, e_flat = anchor.reshape(-1), end.reshape(-1)
    work = _work_dtype(out.dtype, out.device)
    for start in range(0, flat.numel(), _CHUNK):
        stop = min(start + _CHUNK, flat.numel())
        # copies: the work must never write into the anchor, nor into ``end`` when it is ``dest``
        a = a_flat[start:stop].to(device=flat.device, dtype=work, copy=True)
        e = e_flat[start:stop].to(device=flat.device, dtype=work, copy=True)
        flat[start:stop] = a.add_(e.sub_(a), alpha=ratio)  # e - a, then a + ratio (e - a)
    if not out.is_contiguous():
        out.copy_(flat.view_as(out))


@torch.no_grad()
def displacement_norm(current: torch.Tensor, anchor: torch.Tensor) -> float:
    """||current - anchor||_F, accumulated in float64 (chunked, so no parameter-sized temporary)."""
    c_flat, a_flat = current.detach().reshape(-1), anchor.reshape(-1)
    total = 0.0
    for start in range(0, c_flat.numel(), _CHUNK):
        stop = min(start + _CHUNK, c_flat.numel())
        wide = wide_float(c_flat.device)
        diff = c_flat[start:stop].to(wide) - a_flat[start:stop].to(device=c_flat.device, dtype=wide)
        total += float(diff.square().sum())
    return math.sqrt(total)


class DiZOProjection(Transform):
    """DiZO's projection, with a **parameter-sized anchor** (a copy of theta0 for the tensors in S).

    An update-stage transform (after the learning rate), not replayable (its search runs forward passes).

    Every ``interval`` updates, searches one length ratio rho_l = gamma_l / d_l in [1 - clip_range,
    1 + clip_range] per tensor with ``search_iters`` SPSA probe pairs and sets theta_l <- theta0_l +
    rho_l (theta_l - theta0_l). See the module docstring for the equations and the deviations from the
    official code.

    Args:
        projected: which tensors form S: ``"auto"`` (default: every LoRA tensor if the optimizer holds any,
            else the key and value projection weights of every attention block), a preset of
            :func:`~zotune.algorithms.layer_selection.select_projection_targets` (``"kv"``, ``"qv"``,
            ``"qkv"``, ``"lora"``, ``"all"``), any other string as a regular expression searched in the
            parameter names, a predicate ``f(name, tensor) -> bool``, or an iterable of names, tensors or
            ``(name, tensor)`` pairs (e.g. ``select_projection_targets(model, "kv")``). The presets need
            parameter names: give the optimizer ``model.named_parameters()``.
        interval: kappa, updates between projection cycles (official ``--interval``).
        search_iters: J, probe pairs per cycle (official ``max_iters``, hard-coded 10).
        eps_projection: eps_p, the probe size on gamma (official ``--zo_eps_projection``).
        lr_projection: eta_p, the step size on gamma (official ``--step_size_projection``).
        clip_range: tau, the ratio bound (official ``--clip_range``); 0 < tau < 1.
        anchor_device: where theta0 (and the copy made during a cycle) lives; default the parameter's
            device, ``"cpu"`` keeps it off the accelerator.
        search_closure: ``search_closure(step, j) -> closure`` gives each iteration of the search its own
            batch; default (None): every iteration reuses the closure of the step that ended the cycle.
    """

    def __init__(
        self,
        projected: Projected = "auto",
        interval: int = 50,
        search_iters: int = 10,
        eps_projection: float = 0.1,
        lr_projection: float = 2.0,
        clip_range: float = 0.2,
        anchor_device: str | torch.device | None = None,
        search_closure: SearchClosure | None = None,
    ) -> None:
        for name, value in (("interval", interval), ("search_iters", search_iters)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _finite(eps_projection) or eps_projection <= 0:
            raise ValueError(f"eps_projection must be a finite number > 0, got {eps_projection!r}")
        if not _finite(lr_projection) or lr_projection < 0:
            raise ValueError(f"lr_projection must be a finite number >= 0, got {lr_projection!r}")
        if not _finite(clip_range) or not 0 < clip_range < 1:
            raise ValueError(f"clip_range must be in (0, 1) (the ratio stays in [1 - tau, 1 + tau]), got {clip_range!r}")
        if search_closure is not None and not callable(search_closure):
            raise ValueError("search_closure must be a callable (step, iteration) -> closure, or None")
        if isinstance(projected, str) and not projected:
            raise ValueError("projected must not be an empty string")
        self.projected = projected
        self.interval = interval
        self.search_iters = search_iters
        self.eps_projection = float(eps_projection)
        self.lr_projection = float(lr_projection)
        self.clip_range = float(clip_range)
        self.anchor_device = torch.device(anchor_device) if anchor_device is not None else None
        self.search_closure = search_closure
        self.period = interval
        self.layers: list[_Layer] = []
        # counters (saved in state_dict)
        self.cycles = 0
        self.search_forward_passes = 0
        self.skipped_iterations = 0
        self.last_ratios: dict[str, float] = {}

    name = "dizo"
    stage = "update"
    replayable = False

    def config(self) -> dict[str, Any]:
        projected = self.projected if isinstance(self.projected, str) else repr(type(self.projected).__name__)
        return {
            "projected": projected,
            "interval": self.interval,
            "search_iters": self.search_iters,
            "eps_projection": self.eps_projection,
            "lr_projection": self.lr_projection,
            "clip_range": self.clip_range,
        }

    def periodic_work(self, optimizer: ZOOptimizer, closure: Closure) -> None:
        """One search cycle (weights left as they were), for benchmarks."""
        self.search(optimizer, closure)

    def held_bytes(self) -> int:
        return self.anchor_bytes

    # --- binding: choose S and keep theta0 ---------------------------------------------------------

    def bind(self, optimizer: ZOOptimizer) -> None:
        """Resolve S among the optimizer's trainable tensors and copy their current values as the anchor."""
        if self.layers:
            raise ValueError("this DiZOProjection is already bound to an optimizer; build one per optimizer")
        ids = {id(item.param): item.param_id for item in optimizer.trainable()}
        entries: list[tuple[str | None, torch.Tensor]] = []
        for group in optimizer.param_groups:
            names = group.get("param_names")
            entries.extend((names[i] if names else None, p) for i, p in enumerate(group["params"]))
        chosen = self._resolve(entries)
        layers = []
        for index, (name, param) in enumerate(chosen):
            if id(param) not in ids:
                continue  # frozen (requires_grad=False): MeZO does not move it, so there is nothing to project
            device = self.anchor_device or param.device
            anchor = param.detach().to(device=device, copy=True)
            layers.append(_Layer(name or f"param{index}", param, ids[id(param)], anchor))
        if not layers:
            raise ValueError(
                f"DiZO selected no trainable tensor to project (projected={self.projected!r}); pass the "
                "optimizer model.named_parameters() so the attention projections can be found, or name the "
                "tensors with projected="
            )
        self.layers = layers

    def _resolve(self, entries: list[tuple[str | None, torch.Tensor]]) -> list[tuple[str | None, torch.Tensor]]:
        spec = self.projected
        unnamed = any(name is None for name, _ in entries)
        if isinstance(spec, str):
            if spec == "all":
                return entries
            if unnamed:
                raise ValueError(
                    f"projected={spec!r} needs parameter names: build the optimizer from "
                    "model.named_parameters(), or pass projected=select_projection_targets(model, 'kv')"
                )
            named = [(name, p) for name, p in entries if name is not None]
            if spec in PRESETS:
                return [(name, p) for name, p in select_projection_targets(named, spec)]
            try:
                pattern = re.compile(spec)  # not a preset: a regular expression searched in the names
            except re.error as exc:
                raise ValueError(f"projected={spec!r} is neither a preset ({', '.join(PRESETS)}) nor a valid regular expression: {exc}") from None
            return [(name, p) for name, p in named if pattern.search(name)]
        if callable(spec):
            return [(name, p) for name, p in entries if spec(name or "", p)]
        wanted_names: set[str] = set()
        wanted_tensors: set[int] = set()
        for item in spec:
            if isinstance(item, str):
                wanted_names.add(item)
            elif isinstance(item, torch.Tensor):
                wanted_tensors.add(id(item))
            elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], torch.Tensor):
                wanted_tensors.add(id(item[1]))
            else:
                raise ValueError(f"projected must list names, tensors or (name, tensor) pairs, got {item!r}")
        known = {name for name, _ in entries if name is not None}
        missing = sorted(wanted_names - known)
        if missing:
            raise ValueError(f"projected names {missing[:3]} are not among the optimizer's parameters")
        return [(name, p) for name, p in entries if id(p) in wanted_tensors or (name is not None and name in wanted_names)]

    # --- the cycle ----------------------------------------------------------------------------------

    def after_step(self, optimizer: ZOOptimizer, closure: Closure) -> None:
        """After updates kappa, 2 kappa, ...: search the ratios and apply them."""
        if optimizer.step_count % self.interval != 0:
            return
        ratios = self.search(optimizer, closure)
        self.project(ratios)
        self.cycles += 1

    @torch.no_grad()
    def search(self, optimizer: ZOOptimizer, closure: Closure) -> dict[str, float]:
        """The ZO search for the ratios rho_l = gamma_l / d_l; returns ``{name: rho}`` and leaves every
        weight exactly as it found it (the tensors of S are saved once and written back at the end)."""
        if not self.layers:
            raise ValueError("DiZOProjection is not bound to an optimizer (build it through zotune.dizo / compose)")
        step = optimizer.step_count
        saved = [layer.param.detach().to(device=layer.anchor.device, copy=True) for layer in self.layers]
        norms = [displacement_norm(layer.param, layer.anchor) for layer in self.layers]
        gammas = list(norms)  # re-initialised every cycle: ratio 1
        tau, eps_p = self.clip_range, self.eps_projection
        try:
            for j in range(self.search_iters):
                probe_closure = self.search_closure(step, j) if self.search_closure is not None else closure
                zetas = []
                for layer, d in zip(self.layers, norms, strict=True):
                    zeta = _standard_normal(mix(optimizer.base_seed, STREAM_AUX, _DIZO_TAG, _KEY_ZETA, step, j, layer.param_id))
                    bound = tau / eps_p * d  # so a probe moves gamma by at most tau d
                    zetas.append(min(max(zeta, -bound), bound))
                losses = []
                for sign in (1.0, -1.0):
                    for layer, keep, d, g, z in zip(self.layers, saved, norms, gammas, zetas, strict=True):
                        if d > 0.0:  # d == 0: Delta = 0, every ratio gives theta0 = theta
                            interpolate_(layer.param, layer.anchor, keep, (g + sign * eps_p * z) / d)
                    losses.append(self._forward(optimizer, probe_closure))
                h = (losses[0] - losses[1]) / (2.0 * eps_p)
                if not math.isfinite(h):
                    self.skipped_iterations += 1
                    continue
                gammas = [
                    min(max(g - self.lr_projection * d * h * z, (1.0 - tau) * d), (1.0 + tau) * d)
                    for g, d, z in zip(gammas, norms, zetas, strict=True)
                ]
        finally:
            for layer, keep in zip(self.layers, saved, strict=True):
                layer.param.detach().copy_(keep)
        ratios = {layer.name: (g / d if d > 0.0 else 1.0) for layer, g, d in zip(self.layers, gammas, norms, strict=True)}
        self.last_ratios = ratios
        return ratios

    @torch.no_grad()
    def project(self, ratios: dict[str, float]) -> None:
        """theta_l <- theta0_l + rho_l (theta_l - theta0_l) for every tensor of S named in ``ratios``."""
        for layer in self.layers:
            ratio = ratios.get(layer.name, 1.0)
            if ratio != 1.0:
                interpolate_(layer.param, layer.anchor, layer.param.detach(), ratio)

    def _forward(self, optimizer: ZOOptimizer, closure: Closure) -> float:
        self.search_forward_passes += 1
        return optimizer.query_loss(closure)  # counts the pass; averaged across ranks under data parallelism

    # --- reporting and checkpoints ----------------------------------------------------------------

    @property
    def anchor_bytes(self) -> int:
        """Bytes held by the anchor theta0 (the transform's parameter-sized state)."""
        return sum(layer.anchor.numel() * layer.anchor.element_size() for layer in self.layers)

    @property
    def projected_names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def metrics(self) -> dict[str, Any]:
        """Numbers a runner can log: cycles, the search's forward passes, the anchor's size, the ratios."""
        ratios = list(self.last_ratios.values())
        return {
            "dizo_cycles": self.cycles,
            "dizo_search_forward_passes": self.search_forward_passes,
            "dizo_skipped_iterations": self.skipped_iterations,
            "dizo_anchor_bytes": self.anchor_bytes,
            "dizo_projected_tensors": len(self.layers),
            "dizo_ratio_min": min(ratios) if ratios else None,
            "dizo_ratio_max": max(ratios) if ratios else None,
        }

    def state_dict(self) -> dict[str, Any]:
        """Counters, the last ratios and the anchor (parameter-sized), keyed by stable parameter id.

        The randomness needs no state: zeta and the search batches are pure functions of (seed, step,
        iteration, parameter)."""
        return {
            "cycles": self.cycles,
            "search_forward_passes": self.search_forward_passes,
            "skipped_iterations": self.skipped_iterations,
            "last_ratios": dict(self.last_ratios),
            "anchor": {layer.param_id: layer.anchor for layer in self.layers},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        anchors = state.get("anchor")
        if anchors is None:
            raise ValueError("not a DiZOProjection state: the 'anchor' entry is missing")
        mine = {layer.param_id: layer for layer in self.layers}
        if set(anchors) != set(mine):
            raise ValueError(
                f"the saved DiZO anchor covers {len(anchors)} tensors that do not match the {len(mine)} projected here"
            )
        for param_id, tensor in anchors.items():
            layer = mine[param_id]
            if tuple(tensor.shape) != tuple(layer.anchor.shape):
                raise ValueError(f"anchor of {layer.name} has shape {tuple(tensor.shape)}, expected {tuple(layer.anchor.shape)}")
            layer.anchor.copy_(tensor)
        self.cycles = int(state["cycles"])
        self.search_forward_passes = int(state["search_forward_passes"])
        self.skipped_iterations = int(state["skipped_iterations"])
        self.last_ratios = dict(state["last_ratios"])

    def __repr__(self) -> str:
        return (
            f"DiZOProjection(projected={self.projected!r}, interval={self.interval}, search_iters={self.search_iters}, "
            f"eps_projection={self.eps_projection}, lr_projection={self.lr_projection}, clip_range={self.clip_range}, "
            f"anchor_device={self.anchor_device})"
        )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_OPTIONS = frozenset(
    {"projected", "interval", "search_iters", "eps_projection", "lr_projection", "clip_range", "anchor_device", "search_closure"}
)


def _build(setup: Setup, **options: Any) -> Parts:
    if options.get("search_closure") is None and setup.fresh_closure is not None:
        options["search_closure"] = setup.fresh_closure  # the runner's fresh batches, as the official code
    return Parts(transforms=(DiZOProjection(**options),))


DIZO = Component(
    "dizo",
    build=_build,
    options=_OPTIONS,
    summary="the authors' DiZO: every kappa steps, rescale each layer's distance from theta0 by a ZO-searched ratio",
)
register_component(DIZO)


def dizo(
    params: Iterable[Any],
    lr: float = 1e-6,
    eps: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    n_queries: int = 1,
    *,
    projected: Projected = "auto",
    interval: int = 50,
    search_iters: int = 10,
    eps_projection: float = 0.1,
    lr_projection: float = 2.0,
    clip_range: float = 0.2,
    anchor_device: str | torch.device | None = None,
    search_closure: SearchClosure | None = None,
    **options: Any,
) -> ZOOptimizer:
    """MeZO with DiZO's layer-wise projection every ``interval`` steps (see :class:`DiZOProjection`).

    Per step, MeZO's theta <- theta - lr (c z + weight_decay theta); after updates kappa, 2 kappa, ...,
    for every tensor l in S: theta_l <- theta0_l + rho_l (theta_l - theta0_l), with rho_l in
    [1 - clip_range, 1 + clip_range] found by ``search_iters`` SPSA probe pairs on the loss.

    Defaults: the official code's (kappa = 50, J = 10, eps_p = 0.1, eta_p = 2.0, tau = 0.2, S = key and
    value projections or all LoRA tensors); lr and eps as MeZO's full fine-tuning (the official script
    uses lr 1e-6/1e-7 and eps 1e-3; for LoRA, 1e-4 and 1e-2). ``options`` go to :func:`zotune.compose`
    (``sampler``, ``difference``, ``extra_transforms``, ...). With KerZOO's estimator and PeZO's sampler:
    ``zotune.build_optimizer("kerzoo+pezo+dizo", params, lr=..., interval=50)``.

    Example:
        >>> opt = zotune.dizo(model.named_parameters(), lr=1e-6, eps=1e-3)      # k/v of every block
        >>> opt = zotune.dizo(model.named_parameters(), projected="qv", anchor_device="cpu")
        >>> loss = opt.step(lambda: loss_fn(model(x), y))
    """
    return compose(
        params,
        [DIZO],
        lr=lr,
        eps=eps,
        weight_decay=weight_decay,
        seed=seed,
        n_queries=n_queries,
        projected=projected,
        interval=interval,
        search_iters=search_iters,
        eps_projection=eps_projection,
        lr_projection=lr_projection,
        clip_range=clip_range,
        anchor_device=anchor_device,
        search_closure=search_closure,
        **options,
    )


def dizo_transform(optimizer: ZOOptimizer) -> DiZOProjection:
    """The DiZO transform of an optimizer (for its metrics), or ValueError if it has none."""
    for transform in optimizer.transforms:
        if isinstance(transform, DiZOProjection):
            return transform
    raise ValueError("this optimizer has no DiZO projection")


