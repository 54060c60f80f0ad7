"""infinite-former: the ∞-former's unbounded long-term memory in PyTorch."""

from .attention import LongTermAttention, LTMConfig, gaussian_kl
from .basis import GaussianBasis
from .continuous import ContinuousSoftmax, ContinuousSparsemax
from .memory import LTMState, MemoryState, sticky_positions, uniform_positions, update_memory

__version__ = "0.1.0"

__all__ = [
    "ContinuousSoftmax",
    "ContinuousSparsemax",
    "GaussianBasis",
    "LTMConfig",
    "LongTermAttention",
    "LTMState",
    "MemoryState",
    "gaussian_kl",
    "sticky_positions",
    "uniform_positions",
    "update_memory",
]
