"""The language model with its memory types: Transformer-XL (``xl``), the Compressive Transformer
(``compressive``) and the ∞-former (``infinite``, ``infinite_sticky``), one file each implementing
the protocol of memory_type.py, listed in registry.py. Built on the memory layer (attention.py,
memory.py); knows nothing of data, training or experiments."""

from .config import ModelConfig
from .lm import InfiniteFormerLM, LMOutput
from .memory_type import MemoryType
from .registry import MEMORY_TYPES, memory_labels, memory_type_class
from .state import LMState, ModelState

__all__ = [
    "MEMORY_TYPES",
    "InfiniteFormerLM",
    "LMOutput",
    "LMState",
    "MemoryType",
    "ModelConfig",
    "ModelState",
    "memory_labels",
    "memory_type_class",
]
