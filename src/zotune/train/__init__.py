"""The training run: configuration, the ZO loop, the run folder and its plot."""

from zotune.train.config import TrainConfig, load_config_file, resolve_config
from zotune.train.loop import TrainingDiverged, train

__all__ = ["TrainConfig", "TrainingDiverged", "load_config_file", "resolve_config", "train"]
