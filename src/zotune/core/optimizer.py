"""``ZOOptimizer``: a ``torch.optim.Optimizer`` that estimates gradients from forward passes only.

One step with the default parts (MeZO), for every trainable tensor theta and a direction z regenerated
from the key ``(seed, step, query, parameter)``:

    pass 1   theta <- theta + eps z                      L+ = closure()
    pass 2   theta <- theta - 2 eps z                    L- = closure()
             g = (L+ - L-) / (2 eps)
    pass 3   theta <- (1 - lr wd) (theta + eps z) - lr g z          (restore and update fused)

MeZO's reference code restores theta in a pass of its own and then updates it (four regenerations of z,
each allocating a new tensor); here the restore is folded into the update and every pass is in place.
Nothing parameter-sized is allocated, and z is never stored: a step is recorded as a
:class:`StepRecord` ``(step, seed, coefficients, lrs, weight_decays)`` from which the update can be
replayed exactly (:meth:`ZOOptimizer.apply_record`).

The three parts are pluggable: the sampler (where z comes from), the estimator (which losses to query,
the coefficients c_q and per-tensor radii and weights, see :mod:`zotune.core.estimators`) and the chain
of transforms (:mod:`zotune.core.transforms`: gradient-stage transforms such as a clip, momentum or Adam,
then the learning rate and weight decay, then update-stage transforms such as KerZOO's averaging or
DiZO's projection). A step runs:

    begin_step (each transform; may move theta to a probe point)
    estimate   (the estimator's forward passes)
    for each tensor: update = chain(g_hat_l), written in place, fused with the last probe's restore
    end_step   (each transform), record, after_step (each transform, with the closure)

Named methods such as :func:`zotune.mezo` are short compositions of these parts (:mod:`zotune.methods`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import torch

from zotune.core.distributed import LossSync, Weighted
from zotune.core.estimators import Estimate, Estimator, TwoPointEstimator
from zotune.core.samplers import Direction, PlannedCall, Sampler, make_sampler
from zotune.core.seeds import name_id
from zotune.core.transforms import (
    DecoupledWeightDecay,
    LearningRate,
    TensorUpdate,
    Transform,
    callable_name,
    validate_hyperparameters,
)

Closure = Callable[[], Any]


class StepRecord(NamedTuple):
    """The whole update of one step, in a few bytes: the coefficients c_q and the hyperparameters used;
    z, r and w are regenerated from (seed, step)."""

    step: int
    seed: int
    coefficients: tuple[float, ...]
    lrs: tuple[float, ...]  # one per param group, as used in this step
    weight_decays: tuple[float, ...]  # one per param group
    finite: bool = True  # False: the step was dropped (a non-finite loss) and changed nothing


class Trainable(NamedTuple):
    """One tensor a step perturbs, with its place in the step (canonical order: ascending ``param_id``)."""

    group_index: int
    param: torch.Tensor
    param_id: int
    index: int  # position among the step's trainable tensors
    offset: int  # its first element among all trainable elements, in the same order


class StepContext:
    """What the estimator's prober and the transforms see of one step.

    Attributes:
        optimizer: the optimizer.
        step: the step being taken (or replayed).
        params: the step's trainable tensors, in canonical order.
        coefficients: c_q, set once the estimator has returned (empty before).
    """

    def __init__(self, optimizer: ZOOptimizer, step: int, params: list[Trainable]) -> None:
        self.optimizer = optimizer
        self.step = step
        self.params = params
        self.coefficients: tuple[float, ...] = ()
        self._count = len(params)
        self._total = sum(item.param.numel() for item in params)
        self._factors: dict[tuple[int, int, int], tuple[float, float]] = {}

    def group(self, item: Trainable) -> dict[str, Any]:
        return self.optimizer.param_groups[item.group_index]

    def direction(self, query: int, item: Trainable, step: int | None = None) -> Direction:
        """The key of z for ``item`` in ``query`` of ``step`` (this step by default)."""
        return Direction(
            self.optimizer.base_seed,
            self.step if step is None else step,
            query,
            item.param_id,
            item.index,
            self._count,
            item.offset,
            self._total,
        )

    def factors(self, query: int, item: Trainable, step: int | None = None) -> tuple[float, float]:
        """The estimator's (r_{q,l}, w_{q,l}) for ``item`` (cached for the step)."""
        estimator = self.optimizer.estimator
        if not estimator.per_tensor:
            return 1.0, 1.0
        step = self.step if step is None else step
        key = (step, query, item.param_id)
        if key not in self._factors:
            self._factors[key] = estimator.tensor_factors(self.optimizer.base_seed, step, query, item.param_id)
        return self._factors[key]

    def gradient(self, item: Trainable, coefficients: Sequence[float] | None = None, step: int | None = None) -> TensorUpdate:
        """The implicit estimate g_hat_l = sum_q c_q w_{q,l} z_{q,l} of ``item`` (of this step, or of
        another step's coefficients, as momentum rebuilt from past seeds needs)."""
        coefficients = self.coefficients if coefficients is None else coefficients
        terms = []
        for query, c in enumerate(coefficients):
            if c != 0.0:
                terms.append((self.direction(query, item, step), c * self.factors(query, item, step)[1]))
        return TensorUpdate(terms)

    def materialize(self, item: Trainable, update: TensorUpdate) -> torch.Tensor:
        """The step's update of ``item`` (its terms plus its dense part, not its decay) summed into one
        dense tensor of the parameter's shape: a scratch reused by every tensor of the step (float32 for
        half-precision parameters). ``update``'s own dense buffer is reused when it has one."""
        dense = update.dense
        if dense is None:
            dense = self.optimizer._scratch(item.param)
            dense.zero_()
        flat = dense.view(-1)
        for direction, alpha in update.terms:
            if alpha != 0.0:
                self.optimizer._add_direction(flat, direction, alpha)
        return dense


class ZOOptimizer(torch.optim.Optimizer):
    """Zeroth-order optimizer: ``step(closure)`` runs forward passes only and updates in place.

    Args:
        params: tensors, ``(name, tensor)`` pairs (then z is keyed by the name, so it does not depend on the
            order the parameters are passed in), or param-group dicts.
        lr: learning rate (per group; ``torch.optim.lr_scheduler`` works).
        estimator: the gradient estimator; default :class:`TwoPointEstimator` with ``eps=1e-3``.
        sampler: a registered sampler name or a :class:`Sampler`; default counter-based ``"gaussian"``.
        transforms: the update chain; default ``[LearningRate(), DecoupledWeightDecay()]``.
        weight_decay: decoupled weight decay (per group), applied where the decay transform's mask says.
        seed: the base seed every direction is derived from.
        record_trajectory: keep every :class:`StepRecord` in ``self.trajectory`` (a few bytes per step).
        sync: data parallelism (:mod:`zotune.core.distributed`): every probe loss is averaged across the
            ranks before use, so ranks that evaluate their own shard of the batch take the same step and
            keep identical weights; 16 bytes exchanged per forward pass, no gradients, no weights.

    Example:
        >>> opt = ZOOptimizer(model.named_parameters(), lr=1e-6)
        >>> def closure():
        ...     return loss_fn(model(x), y)           # called under torch.no_grad()
        >>> loss = opt.step(closure)
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-6,
        *,
        estimator: Estimator | None = None,
        sampler: str | Sampler = "gaussian",
        transforms: Sequence[Transform] | None = None,
        weight_decay: float = 0.0,
        seed: int = 0,
        record_trajectory: bool = False,
        sync: LossSync | None = None,
    ) -> None:
        validate_hyperparameters(lr, weight_decay)
        if sync is not None and not isinstance(sync, LossSync):
            raise ValueError(f"sync must be a zotune LossSync or None, got {type(sync).__name__}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, got {seed!r}")
        params = list(params)
        if not params:
            raise ValueError("ZOOptimizer got an empty parameter list: pass the tensors to train")
        super().__init__(params, dict(lr=float(lr), weight_decay=float(weight_decay)))
        for group in self.param_groups:
            validate_hyperparameters(group["lr"], group["weight_decay"])
        if not any(len(g["params"]) for g in self.param_groups):
            raise ValueError("ZOOptimizer got param groups with no tensors in them")
        self.estimator = estimator if estimator is not None else TwoPointEstimator()
        self.sampler = make_sampler(sampler)
        self.transforms: list[Transform] = (
            list(transforms) if transforms is not None else [LearningRate(), DecoupledWeightDecay()]
        )
        names = [t.name for t in self.transforms]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"two transforms share the name {duplicated[0]!r}; their buffers would collide")
        self.base_seed = seed
        self.sync = sync
        self.step_count = 0
        self.forward_passes = 0
        self.nonfinite_steps = 0
        self.random_numbers_drawn = 0
        self.last_step_random_numbers = 0
        self.last_record: StepRecord | None = None
        self.last_step_losses: list[float] = []
        self.trajectory: list[StepRecord] | None = [] if record_trajectory else None
        self._param_ids = self._assign_param_ids()
        self._scratch_buffers: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
        for transform in self.transforms:
            transform.bind(self)  # last: a transform may read the parameters as they are before step 0

    # --- parameters -----------------------------------------------------------------------------------

    def _assign_param_ids(self) -> list[list[int]]:
        """A stable id per parameter: a hash of its name if names were given, else its global position."""
        ids: list[list[int]] = []
        position = 0
        seen: set[int] = set()
        for group in self.param_groups:
            names = group.get("param_names")
            group_ids = []
            for i, _ in enumerate(group["params"]):
                pid = name_id(names[i]) if names else position
                if pid in seen:
                    raise ValueError(f"two parameters share the id {pid}; parameter names must be unique")
                seen.add(pid)
                group_ids.append(pid)
                position += 1
            ids.append(group_ids)
        return ids

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_param_ids"):  # after construction: give the new tensors ids too
            self._param_ids = self._assign_param_ids()

    def trainable(self) -> list[Trainable]:
        """The tensors this step perturbs: every parameter with ``requires_grad`` (re-read each step), in
        canonical order (ascending id, so the order the parameters were passed in does not matter)."""
        found = [
            (self._param_ids[gi][pi], gi, p)
            for gi, group in enumerate(self.param_groups)
            for pi, p in enumerate(group["params"])
            if p.requires_grad
        ]
        found.sort(key=lambda entry: entry[0])
        items, offset = [], 0
        for index, (pid, gi, p) in enumerate(found):
            items.append(Trainable(gi, p, pid, index, offset))
            offset += p.numel()
        return items

    def direction(self, query: int, param_id: int, step: int | None = None) -> Direction:
        """The key of z for a parameter id (its place in the step filled in from the current trainable set)."""
        context = StepContext(self, self.step_count if step is None else step, self.trainable())
        for item in context.params:
            if item.param_id == param_id:
                return context.direction(query, item)
        return Direction(self.base_seed, context.step, query, param_id)

    # --- passes over the parameters -------------------------------------------------------------------

    def _add_direction(self, flat: torch.Tensor, direction: Direction, alpha: float, decay: float = 1.0) -> None:
        self.sampler.add_(flat, direction, alpha, decay)
        self.last_step_random_numbers += self.sampler.numbers_drawn(flat.numel())

    def _apply_direction(self, param: torch.Tensor, direction: Direction, alpha: float, decay: float = 1.0) -> None:
        self.sampler.apply_(param, direction, alpha, decay)
        self.last_step_random_numbers += self.sampler.numbers_drawn(param.numel())

    def _run_pass(self, calls: Sequence[tuple[torch.Tensor, Direction, float, float]]) -> None:
        """``param <- decay param + alpha z(direction)`` for each call in order, announced to the sampler first
        so it can move every call's scalars to the device in one copy (on a GPU, one copy per tensor would
        make a pass over a model thousands of tiny blocking transfers)."""
        if not calls:
            return
        self.sampler.prepare([PlannedCall(p.numel(), p.device, d, a, k) for p, d, a, k in calls])
        for param, direction, alpha, decay in calls:
            self._apply_direction(param, direction, alpha, decay)

    def _displace_all(self, ctx: StepContext, query: int, scale: float) -> None:
        self._run_pass([(item.param, ctx.direction(query, item), scale * ctx.factors(query, item)[0], 1.0)
                        for item in ctx.params])

    def _scratch(self, param: torch.Tensor) -> torch.Tensor:
        """A reusable buffer of ``param``'s shape (float32 for half precision), shared by every tensor."""
        dtype = torch.float32 if param.dtype in (torch.float16, torch.bfloat16) else param.dtype
        key = (dtype, param.device)
        buffer = self._scratch_buffers.get(key)
        if buffer is None or buffer.numel() < param.numel():
            buffer = torch.empty(param.numel(), dtype=dtype, device=param.device)
            self._scratch_buffers[key] = buffer
        return buffer[: param.numel()].view(param.shape)

    def _apply_updates(self, ctx: StepContext, pending: tuple[int, float] | None) -> None:
        """theta_l <- decay (theta_l + pending) + chain(g_hat_l), tensor by tensor, in place.

        The regenerations are collected and run as one pass (:meth:`_run_pass`); an update with a dense part
        (which lives in a scratch the next tensor reuses) runs what is collected and is written at once."""
        calls: list[tuple[torch.Tensor, Direction, float, float]] = []
        if any(getattr(t, "materializes", False) for t in self.transforms):
            self._announce_dense_updates(ctx, pending)
        for item in ctx.params:
            update = ctx.gradient(item)
            for transform in self.transforms:
                update = transform.update(ctx, item, update)
            if update.dense is None:
                self._write(ctx, item, update, pending, calls)
            else:
                self._run_pass(calls)
                calls = []
                self._write(ctx, item, update, pending, None)
        self._run_pass(calls)
        self.sampler.release()

    def _announce_dense_updates(self, ctx: StepContext, pending: tuple[int, float] | None) -> None:
        """Before a chain that sums each tensor's estimate into a dense buffer (KerZOO's clip, momentum, Adam):
        announce those sums and the restores that follow them, so their scalars travel in one copy too
        (a call the chain makes differently is simply not recognised and builds its own)."""
        planned: list[PlannedCall] = []
        for item in ctx.params:
            numel, device = item.param.numel(), item.param.device
            for direction, alpha in ctx.gradient(item).terms:
                if alpha != 0.0:
                    planned.append(PlannedCall(numel, device, direction, alpha, 1.0))
            if pending is not None:
                query, scale = pending
                planned.append(PlannedCall(numel, device, ctx.direction(query, item), scale * ctx.factors(query, item)[0], 1.0))
        self.sampler.prepare(planned)

    def _write(self, ctx: StepContext, item: Trainable, update: TensorUpdate, pending: tuple[int, float] | None,
               calls: list[tuple[torch.Tensor, Direction, float, float]] | None) -> None:
        """Write one tensor's update: its regenerations run now (``calls`` None) or are appended to ``calls``."""
        terms = list(update.terms)
        decay = update.decay
        if pending is not None:  # the last probe's displacement, undone in the same pass as the update
            query, scale = pending
            direction = ctx.direction(query, item)
            restore = decay * scale * ctx.factors(query, item)[0]
            for k, (d, alpha) in enumerate(terms):
                if d == direction:
                    terms[k] = (d, alpha + restore)
                    break
            else:
                terms.insert(0, (direction, restore))
        decay_left = decay
        mine: list[tuple[torch.Tensor, Direction, float, float]] = []
        for direction, alpha in terms:
            if alpha == 0.0 and decay_left == 1.0:
                continue  # nothing to add for this direction (e.g. lr = 0 and no displacement)
            mine.append((item.param, direction, alpha, decay_left))
            decay_left = 1.0
        if calls is not None and update.dense is None:
            calls.extend(mine)  # decay_left != 1 only when there is no term, and then it touches only this tensor
        else:
            self._run_pass(mine)
        data = item.param.detach()
        if decay_left != 1.0:  # no term carried the decay
            data.mul_(decay_left)
        if update.dense is not None:
            data.add_(update.dense.to(data.dtype) if update.dense.dtype != data.dtype else update.dense)

    # --- the step -------------------------------------------------------------------------------------

    def query_loss(self, closure: Closure) -> float:
        """One forward pass: the closure's loss as a float, averaged across the ranks when the optimizer
        has a ``sync`` (every component that evaluates a loss goes through here, so all ranks agree)."""
        self.forward_passes += 1
        value = closure()
        if self.sync is None:
            return scalar_loss(value.loss if isinstance(value, Weighted) else value)
        if isinstance(value, Weighted):
            return self.sync.mean_loss(scalar_loss(value.loss), float(value.weight))
        return self.sync.mean_loss(scalar_loss(value))

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> torch.Tensor:  # type: ignore[override]
        """One ZO step. ``closure()`` must return the scalar loss at the current parameters, computed
        without autograd (it is called under ``torch.no_grad()``), on the same batch every call of a step.

        Returns the step's loss (mean of the probe losses) as a 0-d float32 tensor; NaN if a probe loss was
        not finite, in which case the parameters are restored, no update is made (weight decay and
        transform state included) and ``nonfinite_steps`` is incremented.
        """
        if closure is None:
            raise ValueError(
                "ZOOptimizer.step requires a closure that returns the loss (forward passes only), "
                "e.g. opt.step(lambda: loss_fn(model(x), y))"
            )
        params = self.trainable()
        if not params:
            raise ValueError("no parameter has requires_grad=True: there is nothing to train")
        ctx = StepContext(self, self.step_count, params)
        self.last_step_random_numbers = 0
        self.last_step_losses = []  # the probe losses in call order: with the step's hyperparameters, all a
        # step's arithmetic depends on, so replaying them reproduces the step bit for bit (core/replay.py)
        for transform in self.transforms:
            transform.begin_step(ctx)
        prober = _Prober(self, ctx, closure)
        try:
            estimate = self.estimator.estimate(prober)
        except BaseException:
            # the closure raised (out of memory, Ctrl-C, a bad batch): put theta back before the exception
            # leaves, so the model is never left displaced by +-eps z; the step did not happen
            prober.undo()
            for transform in reversed(self.transforms):
                transform.cancel_step(ctx)
            raise
        ctx.coefficients = estimate.coefficients
        if estimate.finite:
            self._apply_updates(ctx, estimate.pending)
            for transform in self.transforms:
                transform.end_step(ctx)
        else:  # restore theta exactly as it was: undo the last probe, then each transform's probe point
            if estimate.pending is not None:
                self._displace_all(ctx, *estimate.pending)
            for transform in reversed(self.transforms):
                transform.cancel_step(ctx)
        self._finish_step(estimate)
        for transform in self.transforms:
            transform.after_step(self, closure)
        return torch.tensor(estimate.loss, dtype=torch.float32)

    def _finish_step(self, estimate: Estimate) -> None:
        record = StepRecord(
            step=self.step_count,
            seed=self.base_seed,
            coefficients=estimate.coefficients,
            lrs=tuple(float(g["lr"]) for g in self.param_groups),
            weight_decays=tuple(float(g["weight_decay"]) for g in self.param_groups),
            finite=estimate.finite,
        )
        self.last_record = record
        if self.trajectory is not None:
            self.trajectory.append(record)
        if not estimate.finite:
            self.nonfinite_steps += 1
        self.random_numbers_drawn += self.last_step_random_numbers
        self.step_count += 1

    def not_replayable(self) -> list[str]:
        """The parts whose effect a step record does not capture (empty: records replay the run)."""
        parts = [repr(t) for t in self.transforms if not t.replayable]
        if not getattr(self.sampler, "replayable", True):
            parts.append(repr(self.sampler))
        return parts

    @torch.no_grad()
    def apply_record(self, record: StepRecord) -> None:
        """Apply a recorded update (replay) with the record's learning rates and weight decays, running
        the transform chain (and its state) as the step did."""
        if record.seed != self.base_seed:
            raise ValueError(f"record was made with seed {record.seed}, this optimizer has {self.base_seed}")
        if len(record.lrs) != len(self.param_groups):
            raise ValueError("record and optimizer have different numbers of param groups")
        blocked = self.not_replayable()
        if blocked:
            raise ValueError(f"cannot replay: {', '.join(blocked)} acts through forward passes a record does not hold")
        if not record.finite:
            return  # a dropped step changed nothing in training (no update, no decay, no transform state)
        saved = [(g["lr"], g["weight_decay"]) for g in self.param_groups]
        try:
            for group, lr, wd in zip(self.param_groups, record.lrs, record.weight_decays, strict=True):
                group["lr"], group["weight_decay"] = lr, wd
            ctx = StepContext(self, record.step, self.trainable())
            for transform in self.transforms:
                transform.begin_step(ctx)
            ctx.coefficients = record.coefficients
            self._apply_updates(ctx, None)
            for transform in self.transforms:
                transform.end_step(ctx)
        finally:
            for group, (lr, wd) in zip(self.param_groups, saved, strict=True):
                group["lr"], group["weight_decay"] = lr, wd

    # --- configuration, memory, checkpoints -----------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Every component's type and settings: what ``load_state_dict`` requires to match."""

        def describe(part: Any) -> dict[str, Any]:
            own = part.config() if hasattr(part, "config") else {}
            return {"type": callable_name(type(part)), **own}

        return {
            "estimator": describe(self.estimator),
            "sampler": describe(self.sampler),
            "transforms": [describe(t) for t in self.transforms],
        }

    def state_bytes(self) -> dict[str, int]:
        """Bytes of parameter-sized state per transform buffer name (what ZO adds to inference memory)."""
        totals: dict[str, int] = {t.name: t.held_bytes() for t in self.transforms if t.held_bytes()}
        for state in self.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    totals[key] = totals.get(key, 0) + value.numel() * value.element_size()
        return totals

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        state = super().state_dict()
        state["zo"] = {
            "config": self.config(),
            "step": self.step_count,
            "base_seed": self.base_seed,
            "forward_passes": self.forward_passes,
            "nonfinite_steps": self.nonfinite_steps,
            "random_numbers_drawn": self.random_numbers_drawn,
            "estimator": self.estimator.state_dict(),
            "sampler": self.sampler.state_dict(),
            "transforms": [t.state_dict() for t in self.transforms],
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        if zo is None:
            raise ValueError("not a ZOOptimizer state dict: the 'zo' entry is missing")
        saved, mine = zo.get("config"), self.config()
        if saved != mine:
            raise ValueError(
                f"this state dict was saved by an optimizer built differently: {_first_difference(saved, mine)}; "
                "build the optimizer with the same method and options to load it"
            )
        super().load_state_dict(state_dict)
        self.step_count = int(zo["step"])
        self.base_seed = int(zo["base_seed"])
        self.forward_passes = int(zo["forward_passes"])
        self.nonfinite_steps = int(zo["nonfinite_steps"])
        self.random_numbers_drawn = int(zo["random_numbers_drawn"])
        self.estimator.load_state_dict(zo["estimator"])
        self.sampler.load_state_dict(zo["sampler"])
        for transform, transform_state in zip(self.transforms, zo["transforms"], strict=True):
            transform.load_state_dict(transform_state)

    def __repr__(self) -> str:
        return (
            f"ZOOptimizer(estimator={self.estimator!r}, sampler={self.sampler!r}, "
            f"transforms={self.transforms!r}, seed={self.base_seed}, step={self.step_count})"
        )


def _first_difference(saved: Any, mine: Any, path: str = "") -> str:
    """A one-line description of where two configs first differ (a part's type before its settings)."""
    if saved is None and not path:
        return "the saved state has no configuration"
    if isinstance(saved, dict) and isinstance(mine, dict):
        keys = sorted(set(saved) | set(mine), key=lambda k: (k != "type", str(k)))
        for key in keys:
            if key not in saved or key not in mine:
                where = "here" if key not in saved else "in the saved state"
                return f"{path}.{key} is set only {where}" if path else f"{key} is set only {where}"
            if saved[key] != mine[key]:
                return _first_difference(saved[key], mine[key], f"{path}.{key}" if path else str(key))
    if isinstance(saved, list) and isinstance(mine, list):
        if len(saved) != len(mine):
            return f"{path or 'config'}: {len(saved)} entries saved, {len(mine)} here"
        for k, (a, b) in enumerate(zip(saved, mine)):
            if a != b:
                return _first_difference(a, b, f"{path}[{k}]")
    return f"{path or 'config'} is {saved!r} in the saved state, {mine!r} here"


class _Prober:
    """The estimator's handle on the parameters and the closure during one step."""

    def __init__(self, optimizer: ZOOptimizer, ctx: StepContext, closure: Closure) -> None:
        self.optimizer = optimizer
        self.ctx = ctx
        self.closure = closure
        self.step = ctx.step
        self.base_seed = optimizer.base_seed
        self.net: dict[int, float] = {}  # query -> net displacement scale applied so far this step

    def displace(self, query: int, scale: float) -> None:
        self.optimizer._displace_all(self.ctx, query, scale)
        self.net[query] = self.net.get(query, 0.0) + scale

    def undo(self) -> None:
        """Take back every displacement of this step (theta is restored up to the rounding of one add and
        one subtract per query, as the estimator's own restores)."""
        for query, scale in reversed(list(self.net.items())):
            if scale != 0.0:
                self.optimizer._displace_all(self.ctx, query, -scale)
        self.net.clear()

    def loss(self) -> float:
        value = self.optimizer.query_loss(self.closure)
        self.optimizer.last_step_losses.append(value)
        return value


def scalar_loss(value: Any) -> float:
    """A closure's return value as a Python float: a float64 loss keeps its precision (the difference
    quotient (L+ - L-) / (2 eps) needs it), any other dtype goes through float32."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"the closure must return a scalar loss, got a tensor of shape {tuple(value.shape)}")
        value = value.detach()
        return float(value if value.dtype == torch.float64 else value.to(torch.float32))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the closure must return a scalar loss, got {type(value).__name__}") from None
