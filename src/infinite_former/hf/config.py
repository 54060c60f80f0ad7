"""Deprecated module path: MemoryConfig lives in ``infinite_former.hf.memory_config`` since 0.3."""

import warnings

from .memory_config import MemoryConfig

warnings.warn(
    "infinite_former.hf.config is deprecated since 0.3: import MemoryConfig from infinite_former.hf "
    "(or infinite_former.hf.memory_config)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["MemoryConfig"]
