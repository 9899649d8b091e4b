"""zotune: zeroth-order (forward-only) fine-tuning of language models.

>>> import zotune
>>> opt = zotune.mezo(model.named_parameters(), lr=1e-6, eps=1e-3)
>>> loss = opt.step(lambda: loss_fn(model(x), y))
"""

from zotune.core import (
    CounterSampler,
    DecoupledWeightDecay,
    Direction,
    Estimator,
    LearningRate,
    Sampler,
    StepRecord,
    TorchGeneratorSampler,
    Transform,
    TwoPointEstimator,
    ZOOptimizer,
    available_samplers,
    make_sampler,
    register_sampler,
)
from zotune.core.distributed import LossSync, Weighted, parameters_fingerprint
from zotune.core.replay import replay
from zotune.methods import Component, available_methods, build_optimizer, compose, mezo, register_component
from zotune.algorithms.dizo import DiZOProjection, dizo
from zotune.algorithms.layer_selection import select_projection_targets
from zotune.algorithms.pezo import PeZORNGSampler, pezo
from zotune.algorithms.pezo_block import PeZOBlockSampler, pezo_block
from zotune.algorithms.kerzoo import KerZOOEstimator, kerzoo
from zotune.algorithms.kerzoo_unbiased import KerZOOUnbiasedEstimator, kerzoo_unbiased
from zotune.algorithms.moments import Adam, Momentum, mezo_momentum, zo_adam

__version__ = "0.1.0"

__all__ = [
    "KerZOOEstimator",
    "LossSync",
    "Weighted",
    "parameters_fingerprint",
    "kerzoo",
    "KerZOOUnbiasedEstimator",
    "kerzoo_unbiased",
    "Adam",
    "Momentum",
    "mezo_momentum",
    "zo_adam",
    "DiZOProjection",
    "dizo",
    "select_projection_targets",
    "CounterSampler",
    "DecoupledWeightDecay",
    "Direction",
    "Estimator",
    "LearningRate",
    "Sampler",
    "StepRecord",
    "TorchGeneratorSampler",
    "Transform",
    "TwoPointEstimator",
    "ZOOptimizer",
    "available_methods",
    "available_samplers",
    "build_optimizer",
    "make_sampler",
    "mezo",
    "register_component",
    "Component",
    "compose",
    "register_sampler",
    "replay",
    "PeZORNGSampler",
    "pezo",
    "PeZOBlockSampler",
    "pezo_block",
]


def __getattr__(name: str) -> object:
    """``zotune.ZOTrainer`` without importing ``transformers.Trainer`` (seconds) on ``import zotune``."""
    if name == "ZOTrainer":
        from zotune.hf import ZOTrainer

        return ZOTrainer
    raise AttributeError(f"module 'zotune' has no attribute {name!r}")
