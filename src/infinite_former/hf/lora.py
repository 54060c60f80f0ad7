"""LoRA on the base model (the ``peft`` package) + the full memory weights, trained together.

    model = add_lora(add_memory(base, block_size=512), r=16, target_modules=["q_proj", "v_proj"])
    optimizer = torch.optim.AdamW(model.param_groups(lr=2e-4, memory_lr=2.5e-4))

The base model's own weights stay frozen; its LoRA adapters and every LongTermAttention weight
train, under the fine-tuning recipe's two learning rates (``param_groups``). Save the adapters
with ``model.save_pretrained(dir)`` (peft) and the memory with ``save_memory(model, dir)``.
"""

from __future__ import annotations

from typing import Any

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from .causal_lm import MemoryCausalLM

MEMORY_MODULES = ("query", "key", "value", "out", "mu_proj", "sigma_proj", "gate")  # LongTermAttention's


def add_lora(model: nn.Module, config: LoraConfig | None = None, **lora_kwargs: Any) -> PeftModel:
    """Wrap a model with memory in peft LoRA adapters and keep its memory weights trainable.

    config: a peft LoraConfig; or keywords for one (r, lora_alpha, target_modules, ...), with
    task_type "CAUSAL_LM". Returns the PeftModel; its forward and generate take ``memory=`` as
    the model's do, and ``param_groups(lr, memory_lr)`` reaches the model's.
    """
    if not isinstance(model, MemoryCausalLM):
        raise ValueError(f"add_lora needs a model with memory (add_memory first), got {type(model).__name__}")
    if config is not None and lora_kwargs:
        raise ValueError(f"give a LoraConfig or LoRA keywords, not both (got {sorted(lora_kwargs)})")
    if config is None:
        config = LoraConfig(task_type="CAUSAL_LM", **lora_kwargs)
    if model.training_free is not None:
        targets = config.target_modules
        names = [targets] if isinstance(targets, str) else list(targets or [])
        memory = sorted(
            {n for n in names for m in ("ltm", *MEMORY_MODULES) if n == m or n.startswith("ltm.")}
        )
        if memory:
            raise ValueError(
                f"training_free memory has no weights: LoRA cannot target the memory ({memory}); target the "
                "base model's projections (e.g. q_proj, v_proj), which the memory reads through"
            )
    peft_model = get_peft_model(model, config)
    for p in model.ltm.parameters():  # peft froze everything but the adapters: the memory trains in full
        p.requires_grad_(True)
    return peft_model


__all__ = ["add_lora"]
