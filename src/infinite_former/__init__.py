"""infinite-former: the ∞-former's unbounded long-term memory in PyTorch.

The memory layer (this package's top-level modules: basis, ridge, continuous, memory, attention)
needs only torch and is imported eagerly. The most-used names of the layers above it (models,
data, training, experiments) are importable from here too, loaded on first use, so that
``import infinite_former`` stays torch-only.
"""

from importlib import import_module
from typing import Any

from .attention import LongTermAttention, LTMConfig, gaussian_kl
from .basis import GaussianBasis
from .continuous import ContinuousSoftmax, ContinuousSparsemax
from .memory import LTMState, sticky_positions, uniform_positions, update_memory

__version__ = "0.2.0"

# name -> submodule; resolved on first access (PEP 562)
_LAZY = {
    "MEMORY_TYPES": "models",
    "InfiniteFormerLM": "models",
    "LMOutput": "models",
    "LMState": "models",
    "ModelConfig": "models",
    "ModelState": "models",  # the 0.1 name of LMState (warns)
    "MemoryState": "memory",  # the 0.1 name of LTMState (warns)
    "Segment": "data.segments",
    "Shard": "data.segments",
    "CheckpointError": "training",
    "TrainConfig": "training",
    "Trainer": "training",
    "evaluate": "training",
    "find_checkpoint": "training",
    "load_checkpoint": "training",
    "SortSettings": "experiments.sort",
    "run_sort_experiment": "experiments.sort",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    if name not in ("ModelState", "MemoryState"):  # former names warn at every use
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ContinuousSoftmax",
    "ContinuousSparsemax",
    "GaussianBasis",
    "LTMConfig",
    "LTMState",
    "LongTermAttention",
    "gaussian_kl",
    "sticky_positions",
    "uniform_positions",
    "update_memory",
]  # the memory layer; the lazily loaded names above are importable by name
