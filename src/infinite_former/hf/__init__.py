"""The ∞-former's unbounded memory for Hugging Face causal LMs.

    from infinite_former.hf import add_memory
    model = add_memory(AutoModelForCausalLM.from_pretrained(...), block_size=512)  # Llama, Qwen2, ...
    out = model(input_ids, memory=None); gen = model.generate(prompt, memory=out.memory)

    from infinite_former.hf import InfiniteGPT2LMHeadModel, InfiniteGPT2Stream
    model = InfiniteGPT2LMHeadModel.from_pretrained("gpt2")  # or a local GPT-2 folder
    stream = InfiniteGPT2Stream(model)  # any model with memory
    stream.read(long_text_ids); new_ids = stream.generate(prompt_ids, max_new_tokens=32)

Importing this package registers the "infinite-gpt2" model type with
AutoConfig / AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .adapter import from_pretrained, load_memory, load_model, read_adapter_config, save_memory
from .causal_lm import MemoryCausalLM, MemoryCausalLMOutput, add_memory
from .fsdp import shard_with_memory
from .gpt2_config import InfiniteGPT2Config
from .layout import find_layout
from .memory import HFMemoryState, InfiniteGPT2Memory
from .memory_config import MemoryConfig
from .modeling import InfiniteGPT2LMHeadModel, InfiniteGPT2Output
from .streaming import GPT2WindowStream, InfiniteGPT2Stream

MemoryStream = InfiniteGPT2Stream  # the stream works for any model with memory

AutoConfig.register(InfiniteGPT2Config.model_type, InfiniteGPT2Config, exist_ok=True)
AutoModelForCausalLM.register(InfiniteGPT2Config, InfiniteGPT2LMHeadModel, exist_ok=True)

__all__ = [
    "GPT2WindowStream",
    "HFMemoryState",
    "InfiniteGPT2Config",
    "InfiniteGPT2LMHeadModel",
    "InfiniteGPT2Memory",
    "InfiniteGPT2Output",
    "InfiniteGPT2Stream",
    "MemoryCausalLM",
    "MemoryCausalLMOutput",
    "MemoryConfig",
    "MemoryStream",
    "add_memory",
    "find_layout",
    "from_pretrained",
    "load_memory",
    "load_model",
    "read_adapter_config",
    "save_memory",
    "shard_with_memory",
]
