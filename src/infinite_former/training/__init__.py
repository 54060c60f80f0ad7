"""Training infrastructure for any segment-recurrent model: one Trainer (trainer.py), its
checkpoints (checkpoints.py) and logs (logs.py), and evaluation (evaluation.py: loss, accuracy,
perplexity, bits per byte). Depends on the data layer's segments, never on a model or experiment."""

from .checkpoints import CheckpointError, find_checkpoint, load_checkpoint
from .evaluation import evaluate, evaluate_documents, evaluate_lm
from .trainer import RecurrentState, TrainConfig, Trainer, TrainResult, lr_lambda

__all__ = [
    "CheckpointError",
    "RecurrentState",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "evaluate",
    "evaluate_documents",
    "evaluate_lm",
    "find_checkpoint",
    "load_checkpoint",
    "lr_lambda",
]
