"""GPT-2 with the ∞-former's unbounded long-term memory, as a registered transformers model.

InfiniteGPT2LMHeadModel is GPT2LMHeadModel with the generic block scheme and memory of
``causal_lm.py`` (the same code every supported model uses) and its settings in
``InfiniteGPT2Config``. It keeps GPT-2's modules and weight names (so any GPT-2 checkpoint
loads into it) and adds one LongTermAttention per memory layer (``ltm.{k}.*``, output
projection zero-initialised: the model starts equal to GPT-2 on each block).
"""

from __future__ import annotations

from torch import nn
from transformers import GPT2LMHeadModel
from transformers import initialization as init

from ..basis import GaussianBasis
from .causal_lm import MemoryCausalLM, MemoryCausalLMOutput
from .gpt2_config import InfiniteGPT2Config

InfiniteGPT2Output = MemoryCausalLMOutput  # the former name


class InfiniteGPT2LMHeadModel(MemoryCausalLM, GPT2LMHeadModel):
    """GPT-2 LM + a long-term memory (LongTermAttention) in every memory layer.

    forward(input_ids (batch, T), memory=None, labels=None) -> MemoryCausalLMOutput.
    T may be anything: the tokens are split at block boundaries internally.
    """

    config_class = InfiniteGPT2Config
    config: InfiniteGPT2Config
    _no_split_modules = ["GPT2Block", "LongTermAttention"]

    def __init__(self, config: InfiniteGPT2Config) -> None:
        if not isinstance(config, InfiniteGPT2Config):
            raise ValueError(f"config must be an InfiniteGPT2Config, got {type(config).__name__}")
        config.check_memory_fields()
        super().__init__(config)
        self.attach_memory(config.memory)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's init; LTM output projections W_O start at zero (the model starts equal to
        GPT-2); the RBF layout buffers (not saved in checkpoints) are rebuilt."""
        super()._init_weights(module)
        if any(module is m.out for m in getattr(self, "ltm", ())):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, GaussianBasis):
            fresh = GaussianBasis(module.num_basis, module.widths)
            for name, buffer in fresh.named_buffers():
                getattr(module, name).copy_(buffer)


__all__ = ["InfiniteGPT2LMHeadModel", "InfiniteGPT2Output"]
