"""The one generic training loop (on Hugging Face Accelerate)."""
from transferkit.training.loop import TrainConfig, Trainer, predict_outputs

__all__ = ["TrainConfig", "Trainer", "predict_outputs"]
