"""The ZO engine: samplers, estimators, transforms and the optimizer (torch only, no Hugging Face)."""

from zotune.core.estimators import Estimate, Estimator, Prober, TwoPointEstimator
from zotune.core.optimizer import StepContext, StepRecord, Trainable, ZOOptimizer
from zotune.core.samplers import (
    CounterSampler,
    Direction,
    Sampler,
    TorchGeneratorSampler,
    available_samplers,
    make_sampler,
    register_sampler,
)
from zotune.core.transforms import DecoupledWeightDecay, LearningRate, TensorUpdate, Transform, matrices_only

__all__ = [
    "CounterSampler",
    "DecoupledWeightDecay",
    "Direction",
    "Estimate",
    "Estimator",
    "LearningRate",
    "Prober",
    "Sampler",
    "StepRecord",
    "TorchGeneratorSampler",
    "Transform",
    "TwoPointEstimator",
    "TensorUpdate",
    "StepContext",
    "Trainable",
    "ZOOptimizer",
    "available_samplers",
    "make_sampler",
    "matrices_only",
    "register_sampler",
]
