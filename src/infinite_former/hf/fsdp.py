"""FSDP2 for a model with memory: each decoder layer is sharded together with its memory.

    from torch.distributed.fsdp import fully_shard
    from infinite_former.hf import add_memory
    from infinite_former.hf.fsdp import shard_with_memory

    model = add_memory(AutoModelForCausalLM.from_pretrained(...), block_size=512)
    shard_with_memory(model, mesh=init_device_mesh("cuda", (world_size,)))  # in place; returns model

Each memory layer's ``LongTermAttention`` joins its decoder layer in one FSDP group
(``fully_shard([layer, ltm])``): its weights are all-gathered with the layer's and their gradients
reduce-scattered with them. The memory is used in two places, both seen by FSDP's hooks: the read
runs inside the layer's forward (an attention hook), and the absorption of a finished block is a
call of the memory module itself (``ltm(None, block, state)``, see ``absorb_blocks``). The root
module (embeddings, final norm, LM head) is sharded last.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils import _pytree

from ..memory import LTMState


def shard_with_memory(model: nn.Module, **fully_shard_kwargs: Any) -> nn.Module:
    """Apply ``torch.distributed.fsdp.fully_shard`` layer by layer, each memory with its layer.

    model: a model with memory (``add_memory`` / ``InfiniteGPT2LMHeadModel``); keyword arguments go to
    every ``fully_shard`` call (mesh, reshard_after_forward, mp_policy, ...). Call it after
    ``torch.distributed.init_process_group`` and before building the optimizer. Returns the model.
    """
    from torch.distributed.fsdp import fully_shard

    if not hasattr(model, "ltm") or not hasattr(model, "memory_config"):
        raise ValueError(
            f"shard_with_memory needs a model with memory (add_memory), got {type(model).__name__}"
        )
    if LTMState not in _pytree.SUPPORTED_NODES:
        # FSDP finds the tensors of a module's outputs with pytree: the absorption returns an LTMState
        _pytree.register_dataclass(LTMState)
    layers = model.decoder_layout.layers
    memory_of = dict(zip(model.memory_config.layer_ids(len(layers)), model.ltm, strict=True))
    for i, layer in enumerate(layers):
        fully_shard([layer, memory_of[i]] if i in memory_of else layer, **fully_shard_kwargs)
    fully_shard(model, **fully_shard_kwargs)
    return model


__all__ = ["shard_with_memory"]
