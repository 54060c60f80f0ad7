"""The language model with its memory types: Transformer-XL (``xl``), the Compressive Transformer
(``compressive``) and the ∞-former (``infinite``, ``infinite_sticky``). Built on the memory layer
(attention.py, memory.py); knows nothing of data, training or experiments."""

from .config import MEMORY_TYPES, ModelConfig
from .lm import InfiniteFormerLM, LMOutput
from .state import LMState, ModelState

__all__ = ["MEMORY_TYPES", "InfiniteFormerLM", "LMOutput", "LMState", "ModelConfig", "ModelState"]
