"""The language model with its memory types: Transformer-XL (``xl``), the Compressive Transformer
(``compressive``) and the ∞-former (``infinite``, ``infinite_sticky``), one file each implementing
the protocol of memory_type.py, listed in registry.py. Built on the memory layer (attention.py,
memory.py); knows nothing of data, training or experiments."""

from ..utils import deprecated_aliases
from .config import ModelConfig
from .lm import InfiniteFormerLM, LMOutput
from .memory_type import MemoryType
from .registry import MEMORY_TYPES, memory_labels, memory_type_class
from .state import LMState

__getattr__ = deprecated_aliases(__name__, {"ModelState": (LMState, "infinite_former.models.LMState")})  # 0.1

__all__ = [
    "MEMORY_TYPES",
    "InfiniteFormerLM",
    "LMOutput",
    "LMState",
    "MemoryType",
    "ModelConfig",
    "memory_labels",
    "memory_type_class",
]
