"""Tokenizer training: configuration, the two-stage loop, checkpoints and run reports."""

from .config import TrainConfig, load_config
from .loop import Trainer, TrainingDiverged, train

__all__ = ["TrainConfig", "Trainer", "TrainingDiverged", "load_config", "train"]
