"""The training run: configuration, the runner, checkpoints and resume, the seed log, the run folder."""

from zotune.train.config import TrainConfig, load_config_file, resolve_config
from zotune.train.loop import RunInterrupted, TrainingDiverged, resume, train

__all__ = ["TrainConfig", "RunInterrupted", "TrainingDiverged", "load_config_file", "resolve_config", "resume", "train"]
