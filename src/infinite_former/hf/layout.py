"""Finding the decoder layers of a transformers causal LM and their self-attention, generically.

No modeling file is copied or edited: a decoder-only ``PreTrainedModel`` with generation is
supported when its base model holds one ``nn.ModuleList`` of ``num_hidden_layers`` decoder
layers, each with exactly one self-attention child module (a class whose name contains
"Attention") that is called with the layer's normalised hidden states and returns its output
first, and when its forward takes ``attention_mask``, ``position_ids``, ``cache`` and
``logits_to_keep``. That covers Llama, Qwen2, Mistral, GPT-NeoX, GPT-2 and most v5 decoders.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

FORWARD_ARGS = ("attention_mask", "position_ids", "cache", "logits_to_keep")


@dataclass(frozen=True)
class DecoderLayout:
    """The decoder layers and their self-attention modules, with the sizes the memory needs."""

    layers: tuple[nn.Module, ...]
    attentions: tuple[nn.Module, ...]
    hidden_size: int  # e
    num_heads: int  # H
    max_positions: int | None


def find_layout(model: nn.Module, forward: Callable | None = None) -> DecoderLayout:
    """The decoder layout of a causal LM, or a ValueError that names the model's class.

    forward: the base model's forward whose arguments are checked (default: model.forward)."""
    from transformers import GenerationMixin, PreTrainedModel

    name = type(model).__name__
    if not isinstance(model, PreTrainedModel) or not isinstance(model, GenerationMixin):
        raise ValueError(
            f"add_memory needs a transformers causal LM (a PreTrainedModel with generate), got {name}"
        )
    config = model.config.get_text_config(decoder=True)
    if getattr(model.config, "is_encoder_decoder", False):
        raise ValueError(f"{name} is an encoder-decoder model; add_memory supports decoder-only causal LMs")
    missing = [a for a in FORWARD_ARGS if a not in inspect.signature(forward or model.forward).parameters]
    if missing:
        raise ValueError(f"{name} is not supported: its forward does not take {missing}")
    num_layers = getattr(config, "num_hidden_layers", None)
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if not all(isinstance(v, int) for v in (num_layers, hidden, heads)) or hidden % heads:
        raise ValueError(
            f"{name} is not supported: its config has no usable num_hidden_layers/hidden_size/heads"
        )
    lists = [m for m in model.base_model.modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers]
    if len(lists) != 1:
        raise ValueError(
            f"{name} is not supported: found {len(lists)} module lists of its {num_layers} decoder layers, need 1"
        )
    layers = tuple(lists[0])
    attentions = tuple(_self_attention(layer, name) for layer in layers)
    return DecoderLayout(layers, attentions, hidden, heads, getattr(config, "max_position_embeddings", None))


def base_fingerprint(model: nn.Module, layout: DecoderLayout) -> dict:
    """The base model a memory belongs to: class, model type, e, H and layers (provenance.py)."""
    return {
        "architecture": type(model).__name__,
        "model_type": getattr(model.config, "model_type", None),
        "hidden_size": layout.hidden_size,
        "num_heads": layout.num_heads,
        "num_layers": len(layout.layers),
    }


def _self_attention(layer: nn.Module, model_name: str) -> nn.Module:
    found = [
        child
        for child_name, child in layer.named_children()
        if "attention" in type(child).__name__.lower() and "cross" not in child_name.lower()
    ]
    if len(found) != 1:
        raise ValueError(
            f"{model_name} is not supported: its decoder layer {type(layer).__name__} has "
            f"{len(found)} self-attention modules, need exactly 1"
        )
    return found[0]


__all__ = ["DecoderLayout", "base_fingerprint", "find_layout"]
