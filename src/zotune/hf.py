"""Zeroth-order training with the Hugging Face ``Trainer``: :class:`ZOTrainer`.

An existing Trainer script switches to forward-only training by changing one line::

    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
    # becomes
    from zotune.hf import ZOTrainer
    trainer = ZOTrainer(model=model, args=args, train_dataset=train, data_collator=collator,
                        zo_method="mezo", zo_options={"eps": 1e-3})
    trainer.train()

Everything else stays the Trainer's: the data loading, the learning-rate scheduler
(``args.lr_scheduler_type``, ``args.warmup_steps``, ... act on the zotune optimizer's ``param_groups``),
logging, evaluation, checkpoints (the optimizer's ``state_dict`` carries zotune's step counter and
transform state, so ``train(resume_from_checkpoint=...)`` continues the same sequence of directions),
callbacks. Only the optimizer and the training step change; no gradient is ever computed.

``import zotune`` does not import this module (``transformers.Trainer`` takes seconds to import);
``from zotune.hf import ZOTrainer`` and ``zotune.ZOTrainer`` both load it on first use.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import has_length
from transformers.training_args import ParallelMode

from zotune.core.distributed import LossSync, Weighted
from zotune.core.optimizer import ZOOptimizer
from zotune.methods import build_optimizer, compose, parse_method, split_options

__all__ = ["ZOTrainer"]

# zotune options that the Trainer's own arguments set (so the scheduler and the logs agree with them)
_FROM_TRAINING_ARGUMENTS = {"lr": "learning_rate", "weight_decay": "weight_decay"}
# compose()'s own keyword arguments: every other option belongs to a component of the method
_COMPOSE_OPTIONS = frozenset(inspect.signature(compose).parameters) - {"params", "components", "options"}


def _check_zo_options(method: str, options: Mapping[str, Any]) -> None:
    """Refuse an unknown method, an option the method does not take, or one TrainingArguments sets."""
    if not isinstance(method, str):
        raise TypeError(f"zo_method must be a method name such as 'mezo' or 'kerzoo+pezo', got {method!r}")
    components = parse_method(method)  # ValueError for an unknown name
    for key, argument in _FROM_TRAINING_ARGUMENTS.items():
        if key in options:
            raise ValueError(
                f"zo_options must not set {key!r}: ZOTrainer takes it from TrainingArguments.{argument} "
                "(which the Trainer's scheduler and logs also use)"
            )
    split_options(components, {k: v for k, v in options.items() if k not in _COMPOSE_OPTIONS})


def _unwrap(optimizer: Any) -> ZOOptimizer | None:
    """The ZOOptimizer inside Accelerate's (or another library's) optimizer wrappers, or None."""
    seen = 0
    while optimizer is not None and not isinstance(optimizer, ZOOptimizer) and seen < 8:
        optimizer = getattr(optimizer, "optimizer", None)
        seen += 1
    return optimizer if isinstance(optimizer, ZOOptimizer) else None


def _examples_in(batch: Mapping[str, Any]) -> int:
    """The number of examples in a collated batch: the first dimension of its first tensor with one."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError(
        "cannot tell how many examples a batch holds (no tensor in it has a batch dimension): "
        "ZOTrainer weights each rank's loss by its examples under data parallelism"
    )


def _prepare_models_without_ddp(accelerator: Any) -> None:
    """Make ``accelerator`` prepare models as it does for evaluation: device placement, mixed precision
    and ``torch.compile`` as usual, but no ``DistributedDataParallel`` wrapper.

    A ZO step computes no gradient, so DDP has nothing to do, and it is not free: its constructor
    allocates gradient buckets as large as the trainable parameters (doubling their memory, the very
    memory zeroth-order training saves) and registers a hook on every parameter. The ranks are kept
    identical by :class:`~zotune.core.distributed.LossSync` instead (one broadcast at the start, then
    only the probe losses).
    """
    if getattr(accelerator, "_zotune_without_ddp", False):
        return
    prepare_model = accelerator.prepare_model  # bound to this accelerator

    def prepare_model_without_ddp(
        model: nn.Module, device_placement: bool | None = None, evaluation_mode: bool = False
    ) -> nn.Module:
        return prepare_model(model, device_placement=device_placement, evaluation_mode=True)

    accelerator.prepare_model = prepare_model_without_ddp
    accelerator._zotune_without_ddp = True


def _attach_to_trainer(optimizer: ZOOptimizer) -> None:
    """Let the Trainer loop call ``optimizer.step()`` after ``training_step`` took the ZO step.

    The optimizer's ``step`` becomes: with a closure, the ordinary ZO step; without one (the Trainer
    loop's own ``optimizer.step()`` after every ``training_step``: the ZO step already happened there,
    as it needs the batch, which only ``training_step`` has), it hands back that step's loss. A second
    closure-less call for the same step is refused, so a step is never taken twice nor silently skipped.
    """
    if "_zotune_pending_loss" in vars(optimizer):
        return
    inner = optimizer.step  # the class's step, or a scheduler's wrapper of it already on the instance
    owner = weakref.ref(optimizer)

    def step(closure: Callable[[], Any] | None = None) -> torch.Tensor:
        opt = owner()
        if opt is None:  # pragma: no cover - the optimizer is gone
            raise RuntimeError("the optimizer no longer exists")
        opt._opt_called = True  # type: ignore[attr-defined]  # what torch's LR schedulers check
        if closure is not None:
            return inner(closure)
        pending = opt._zotune_pending_loss  # type: ignore[attr-defined]
        if pending is None:
            raise RuntimeError(
                "optimizer.step() was called without a closure and no ZO step is pending: a zotune optimizer "
                "takes its step in ZOTrainer.training_step (or call optimizer.step(closure) yourself)"
            )
        opt._zotune_pending_loss = None  # type: ignore[attr-defined]
        return pending

    step._wrapped_by_lr_sched = True  # type: ignore[attr-defined]  # a scheduler made later need not wrap it
    optimizer._zotune_pending_loss = None  # type: ignore[attr-defined]
    optimizer.step = step  # type: ignore[method-assign]


class ZOTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with a zotune zeroth-order method: forward passes only.

    Each optimizer step takes the step's batch B (all its micro-batches when gradient accumulation is
    on) and, for MeZO (other methods change the estimator, the directions or the update chain, see
    :mod:`zotune.methods`), with z ~ N(0, I) regenerated from ``(seed, step)``::

        c      = (L_B(theta + eps z) - L_B(theta - eps z)) / (2 eps)
        theta <- theta - lr_t * (c z + weight_decay * theta)      (decay on tensors with 2+ dims)

    where ``lr_t`` is the Trainer scheduler's learning rate at step t. The loss L_B is the Trainer's own
    (:meth:`compute_loss`, so ``compute_loss_func``, label smoothing and a ``compute_loss`` override all
    apply), computed under ``torch.no_grad()`` with the model in **eval mode**: dropout off, so the two
    probes of a step see the same function.

    Args:
        *args, **kwargs: everything ``transformers.Trainer`` takes.
        zo_method: a name from ``zotune.available_methods()`` or a ``+`` combination ("kerzoo+pezo").
        zo_options: the method's options, e.g. ``{"eps": 1e-3, "n_queries": 2}`` or
            ``{"kerzoo": {"clip_norm": 1e5}}`` (see :func:`zotune.build_optimizer`). The learning rate and
            weight decay come from ``TrainingArguments.learning_rate`` / ``weight_decay`` and may not be set
            here; the directions' seed defaults to ``TrainingArguments.seed`` (``zo_options={"seed": ...}``
            sets another).

    What the Trainer's arguments mean here:

    * ``learning_rate``: the ZO learning rate (ZO needs a far smaller one than Adam for full fine-tuning;
      MeZO's grid for OPT was 1e-6 / 1e-7). The scheduler (``lr_scheduler_type``, warmup) acts on it.
    * ``optim``, the Adam settings and ``max_grad_norm``: not used (there is no gradient to clip; no
      ``grad_norm`` is logged).
    * ``gradient_accumulation_steps = k > 1``: one ZO step per k micro-batches, on their combined loss
      (the Trainer's usual normalisation: the mean over the k micro-batches, or the token-weighted mean
      when the model normalises by ``num_items_in_batch``), costing 2k forward passes per step; it is
      the same step as with one batch k times as large (up to rounding).
    * ``fp16``: refused (its GradScaler needs gradients); use ``bf16=True``, or load the model in half
      precision. FSDP, DeepSpeed and tensor parallelism are refused (ZO needs every rank to hold the
      whole of each trainable tensor).

    Data parallelism (``torchrun --nproc-per-node N train.py``, the Trainer's own DDP setup): every rank
    evaluates the probes on its own shard of the batch (the Trainer's sharded dataloader) and the optimizer's
    :class:`~zotune.core.distributed.LossSync` averages each probe loss across the ranks (16 bytes per
    forward pass), so every rank takes the same step, the step a single process takes on the combined
    batch of ``per_device_train_batch_size * N`` examples. The trainable parameters are broadcast from
    rank 0 once, just before the optimizer is built; after that the ranks stay identical without
    exchanging any weight, since they draw the same directions from the same seed. The model is *not*
    wrapped in ``DistributedDataParallel`` (its gradient buckets would double the trainable parameters'
    memory for nothing). Each rank's loss is weighted so that the ranks' mean is the combined batch's loss: by
    nothing when the Trainer already divides by the target tokens of all ranks
    (``average_tokens_across_devices``, the default, for models that take ``num_items_in_batch``), by
    the rank's target tokens when that option is off, and otherwise by the rank's examples.
    Accelerate's default ``even_batches`` tops an epoch's last, short batch up with examples from the
    start of the epoch so every rank gets a full one; ``dataloader_drop_last=True`` drops it instead.
    ``accelerator_config={"even_batches": False}`` is refused unless ``dataloader_drop_last`` is set (a
    rank left without a last batch would wait for the others forever).

    A method that asks for fresh batches (DiZO's projection search) gets them from ``train_dataset``
    (when it has a length), drawn from a seed stream of their own as ``zotune train`` does; under data
    parallelism every rank draws the batch of ``per_device_train_batch_size * N`` examples one process
    would draw and evaluates every N-th of them, weighted by its target tokens (or examples).

    ``trainer.optimizer`` is the ZOOptimizer (wrapped by Accelerate once training starts:
    ``trainer.optimizer.optimizer``). Its ``step(closure)`` works as usual; its closure-less ``step()``
    (the Trainer loop's call after each ``training_step``) only returns the step just taken.
    An optimizer passed as ``optimizers=(zo_optimizer, scheduler)`` must be a ZOOptimizer, built with
    ``sync=zotune.LossSync()`` under data parallelism.
    """

    def __init__(
        self,
        *args: Any,
        zo_method: str = "mezo",
        zo_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = dict(zo_options or {})
        _check_zo_options(zo_method, options)
        if kwargs.get("optimizer_cls_and_kwargs") is not None:
            raise ValueError(
                "ZOTrainer builds its own optimizer: pass zo_method / zo_options, not optimizer_cls_and_kwargs"
            )
        self.zo_method = zo_method
        self.zo_options = options
        self._zo_pending: tuple[int, list[Any]] = (-1, [])
        self._zo_fresh_source: tuple[Any, Callable[[list[Any]], Any]] | None = None
        self._zo_broadcast_done: ZOOptimizer | None = None  # the optimizer whose parameters rank 0 broadcast
        super().__init__(*args, **kwargs)
        if self.args.fp16:
            raise ValueError(
                "ZOTrainer does not support fp16=True: its GradScaler works on gradients, which zeroth-order "
                "training never computes; use bf16=True, or load the model in float16 / bfloat16"
            )
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError(
                "ZOTrainer does not support FSDP or DeepSpeed: a ZO step perturbs whole tensors, so every rank "
                "needs all of them; use plain data parallelism (torchrun without an FSDP / DeepSpeed config)"
            )
        if self.zo_data_parallel:
            self._check_data_parallel()
        if self.optimizer is not None:
            zo = _unwrap(self.optimizer)
            if zo is None:
                raise TypeError(
                    f"ZOTrainer needs a zotune optimizer, got {type(self.optimizer).__name__}: pass "
                    "optimizers=(None, scheduler) and zo_method / zo_options, or a ZOOptimizer"
                )
            self._check_sync(zo)
            _attach_to_trainer(zo)

    # --- data parallelism ------------------------------------------------------------------------------

    @property
    def zo_data_parallel(self) -> bool:
        """True when this process is one of several ranks of a data-parallel run (``args.world_size > 1``)."""
        return self.args.world_size > 1

    def create_accelerator_and_postprocess(self) -> None:
        """The Trainer's accelerator; under data parallelism it prepares the model without a DDP wrapper."""
        super().create_accelerator_and_postprocess()
        if self.args.world_size > 1:
            _prepare_models_without_ddp(self.accelerator)

    def _check_data_parallel(self) -> None:
        """Refuse the multi-process setups in which the ranks could not take the same ZO steps."""
        from accelerate.utils import DistributedType

        accelerator = self.accelerator
        if self.args.parallel_mode != ParallelMode.DISTRIBUTED or not (
            accelerator.distributed_type == DistributedType.MULTI_CPU or accelerator.multi_device
        ):
            raise ValueError(
                "ZOTrainer runs on several processes only as plain data parallelism (torchrun / accelerate launch "
                f"with DDP); this run's mode is {self.args.parallel_mode.value} / {accelerator.distributed_type}"
            )
        if self.args.parallelism_config is not None or (getattr(self.model, "tp_size", None) or 1) > 1:
            raise ValueError(
                "ZOTrainer does not support tensor, context or sharded parallelism: every rank must hold the whole "
                "model; drop parallelism_config / tp_plan and use plain data parallelism"
            )
        if not self.args.accelerator_config.even_batches and not self.args.dataloader_drop_last:
            raise ValueError(
                "accelerator_config even_batches=False can leave a rank without the last batch of an epoch while "
                "the others wait for its probe losses: keep even_batches=True or set dataloader_drop_last=True"
            )

    def _check_sync(self, zo: ZOOptimizer) -> None:
        """Under data parallelism the optimizer must average its probe losses across the ranks."""
        if self.zo_data_parallel and zo.sync is None:
            raise ValueError(
                "under data parallelism (world_size > 1) the ZO optimizer must average its probe losses across "
                "the ranks: build it with sync=zotune.LossSync(), or let ZOTrainer build it"
            )

    def _broadcast_once(self, zo: ZOOptimizer) -> None:
        """Copy rank 0's trainable parameters to every rank, once per optimizer (the ZO steps keep them equal).

        ZOTrainer broadcasts before it builds its optimizer; an optimizer given to it was built before, so
        a transform that keeps a copy of the starting weights (DiZO) has kept each rank's own: the ranks
        must then have started equal (build it after ``LossSync().broadcast_parameters(...)``).
        """
        if not self.zo_data_parallel or self._zo_broadcast_done is zo or zo.sync is None:
            return
        zo.sync.broadcast_parameters(p for group in zo.param_groups for p in group["params"])
        self._zo_broadcast_done = zo

    # --- the optimizer ---------------------------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The zotune optimizer of ``zo_method`` over the model's trainable parameters (by name)."""
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            named = [(name, p) for name, p in opt_model.named_parameters() if p.requires_grad]
            if not named:
                raise ValueError("the model has no parameter with requires_grad=True: there is nothing to train")
            options = dict(self.zo_options)
            options.setdefault("seed", self.args.seed)
            total_steps = self.state.max_steps if self.state.max_steps > 0 else self.args.max_steps
            if total_steps > 0:
                options.setdefault("total_steps", total_steps)
            if self.train_dataset is not None and has_length(self.train_dataset):
                options.setdefault("fresh_closure", self._zo_fresh_closure)
            sync = options.setdefault("sync", LossSync()) if self.zo_data_parallel else None
            if isinstance(sync, LossSync):
                # before the optimizer exists: a transform may keep a copy of the starting weights (DiZO's anchor)
                sync.broadcast_parameters(p for _, p in named)
            self.optimizer = build_optimizer(
                self.zo_method,
                named,
                lr=self.args.learning_rate,
                weight_decay=self.args.weight_decay,
                **options,
            )
            if isinstance(sync, LossSync):
                self._zo_broadcast_done = _unwrap(self.optimizer)
        self._ready_zo_optimizer()
        return self.optimizer

    def zo_optimizer(self) -> ZOOptimizer:
        """The ZOOptimizer (inside Accelerate's wrapper once training has started)."""
        if self.optimizer is None:
            self.create_optimizer()
        return self._ready_zo_optimizer()

    def _ready_zo_optimizer(self) -> ZOOptimizer:
        """The ZOOptimizer inside ``self.optimizer``, checked, broadcast once and attached to this trainer."""
        zo = _unwrap(self.optimizer)
        if zo is None:
            raise TypeError(f"ZOTrainer needs a zotune optimizer, got {type(self.optimizer).__name__}")
        self._check_sync(zo)
        self._broadcast_once(zo)
        _attach_to_trainer(zo)
        return zo

    # --- the step --------------------------------------------------------------------------------------

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """One ZO step on the batch (on the last micro-batch of a step under gradient accumulation).

        Returns the step's loss (the mean of its probe losses), detached, for the Trainer's logs; 0 for
        the micro-batches that only join the next step.
        """
        zo = self.zo_optimizer()
        step, batches = self._zo_pending
        if step != self.state.global_step:  # micro-batches left over from an interrupted step are dropped
            batches = []
        batches.append(self._prepare_inputs(inputs))
        self._zo_pending = (self.state.global_step, batches)
        if not self.accelerator.gradient_state.sync_gradients:  # more micro-batches of this step to come
            return torch.zeros((), device=self.args.device)
        self._zo_pending = (-1, [])

        model.eval()  # no dropout: both probes of a step must see the same function
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:  # the Trainer's rule: a loss normalised by num_items_in_batch covers the whole step
            scaled = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None

        weight = self._zo_rank_weight(batches, num_items_in_batch)

        def closure() -> torch.Tensor | Weighted:
            total = self._zo_loss(model, batches[0], num_items_in_batch)
            for batch in batches[1:]:
                total = total + self._zo_loss(model, batch, num_items_in_batch)
            loss = total if scaled or len(batches) == 1 else total / len(batches)
            return loss if weight is None else Weighted(loss, weight)

        loss = zo.step(closure)
        zo._zotune_pending_loss = loss  # type: ignore[attr-defined]  # what the loop's optimizer.step() returns
        return loss.detach().to(self.args.device)

    def _zo_rank_weight(
        self, batches: list[Mapping[str, Any]], num_items_in_batch: torch.Tensor | int | None
    ) -> float | None:
        """This rank's weight in the mean of the probe losses across ranks (None in a single process), such
        that the weighted mean is the loss of all the ranks' batches together."""
        if not self.zo_data_parallel:
            return None
        if num_items_in_batch is not None and (self.model_accepts_loss_kwargs or self.compute_loss_func is not None):
            if self.args.average_tokens_across_devices:
                # num_items_in_batch counts the target tokens of every rank and compute_loss multiplied the loss
                # by the number of ranks: the plain mean across ranks is already the combined batch's loss
                return 1.0
            return float(num_items_in_batch)  # this rank's tokens; its loss is its own per-token mean
        return float(sum(_examples_in(batch) for batch in batches))  # per-batch means over examples

    def _zo_loss(
        self, model: nn.Module, batch: Mapping[str, Any], num_items_in_batch: torch.Tensor | int | None
    ) -> torch.Tensor:
        with self.compute_loss_context_manager():
            # a copy: compute_loss pops "labels" from its inputs, and the batch is used again by the next probe
            loss = self.compute_loss(model, dict(batch), num_items_in_batch=num_items_in_batch)
        if self.args.n_gpu > 1:
            loss = loss.mean()  # DataParallel: one loss per device
        return loss

    def _zo_fresh_closure(self, step: int, index: int) -> Callable[[], torch.Tensor]:
        """A loss on a batch of ``train_dataset`` of its own, for a method that asks (DiZO's search): drawn
        by ``zotune.train.loop.fresh_batch_indices``, so it neither moves nor depends on the Trainer's
        shuffling."""
        from zotune.train.loop import fresh_batch_indices

        if self._zo_fresh_source is None:
            dataset, collator = self.train_dataset, self.data_collator
            try:
                import datasets
            except ImportError:  # pragma: no cover - datasets is a dependency of zotune
                datasets = None
            if datasets is not None and isinstance(dataset, datasets.Dataset):
                dataset = self._remove_unused_columns(dataset, description="training")
            else:
                collator = self._get_collator_with_removed_columns(collator, description="training")
            self._zo_fresh_source = (dataset, collator)
        dataset, collator = self._zo_fresh_source
        world = self.args.world_size
        indices = fresh_batch_indices(
            len(dataset), self._train_batch_size * world, seed=self.args.seed, step=step, iteration=index
        )
        model = self.model_wrapped
        if world == 1:
            batch = self._prepare_inputs(collator([dataset[i] for i in indices]))

            def closure() -> torch.Tensor:
                model.eval()
                return self._zo_loss(model, batch, None)

            return closure

        # data parallelism: the ranks draw the same global batch and each evaluates its share of it
        mine = indices[self.args.process_index :: world]
        if not mine:  # fewer examples than ranks: this rank still takes part in every average
            return lambda: Weighted(0.0, 0.0)
        shard = self._prepare_inputs(collator([dataset[i] for i in mine]))
        weight = self._zo_target_tokens(shard)
        weight = float(len(mine)) if weight is None else weight

        def shard_closure() -> Weighted:
            model.eval()
            return Weighted(self._zo_loss(model, shard, None), weight)

        return shard_closure

    def _zo_target_tokens(self, batch: Mapping[str, Any]) -> float | None:
        """The target tokens a language model's mean loss over ``batch`` divides by (labels other than -100,
        shifted by one for a causal LM, as the Trainer counts them), or None when the loss is not one."""
        labels = batch.get("labels")
        shifts = getattr(self, "_loss_shifts_labels", None)  # the Trainer's own reading of the model's loss
        counts_tokens = self.model_accepts_loss_kwargs or self.compute_loss_func is not None
        if not isinstance(labels, torch.Tensor) or labels.dim() < 2 or shifts is None or not counts_tokens:
            return None
        counted = labels[..., 1:] if shifts else labels
        return float(counted.ne(-100).sum())

    # --- what has no meaning without gradients --------------------------------------------------------

    def _clip_grad_norm(self, model: nn.Module) -> None:  # type: ignore[override]
        return None  # no gradients to clip

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> None:  # type: ignore[override]
        return None  # nothing to log as "grad_norm"
