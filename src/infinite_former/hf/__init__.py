"""GPT-2 + the ∞-former long-term memory as a Hugging Face transformers model.

    from infinite_former.hf import InfiniteGPT2LMHeadModel, InfiniteGPT2Stream
    model = InfiniteGPT2LMHeadModel.from_pretrained("gpt2")  # or a local GPT-2 folder
    stream = InfiniteGPT2Stream(model)
    stream.read(long_text_ids); new_ids = stream.generate(prompt_ids, max_new_tokens=32)

Importing this package registers the "infinite-gpt2" model type with
AutoConfig / AutoModelForCausalLM.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration import InfiniteGPT2Config
from .memory import InfiniteGPT2Memory
from .modeling import InfiniteGPT2LMHeadModel, InfiniteGPT2Output
from .streaming import GPT2WindowStream, InfiniteGPT2Stream

AutoConfig.register(InfiniteGPT2Config.model_type, InfiniteGPT2Config, exist_ok=True)
AutoModelForCausalLM.register(InfiniteGPT2Config, InfiniteGPT2LMHeadModel, exist_ok=True)

__all__ = [
    "InfiniteGPT2Config",
    "InfiniteGPT2LMHeadModel",
    "InfiniteGPT2Memory",
    "InfiniteGPT2Output",
    "InfiniteGPT2Stream",
    "GPT2WindowStream",
]
