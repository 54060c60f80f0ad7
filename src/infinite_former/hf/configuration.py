"""Deprecated module path: InfiniteGPT2Config lives in ``infinite_former.hf.gpt2_config`` since 0.3."""

import warnings

from .gpt2_config import InfiniteGPT2Config

warnings.warn(
    "infinite_former.hf.configuration is deprecated since 0.3: import InfiniteGPT2Config from "
    "infinite_former.hf (or infinite_former.hf.gpt2_config)",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = ["InfiniteGPT2Config"]
