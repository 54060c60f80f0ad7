"""The memory weights as a small adapter beside the base model, like a PEFT adapter.

    save_memory(model, "adapter/")            # memory_adapter.safetensors + memory_config.json
    model = load_memory(base_model, "adapter/")  # add_memory with the saved settings + weights
    model = from_pretrained("full/")          # a folder written by model.save_pretrained

The adapter holds only the LongTermAttention weights (``ltm.*``) and a JSON file with the
memory settings and the base model it was trained on (``base_model_name_or_path``, its class
and model type), so that loading onto another base model is refused with a clear error.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from .causal_lm import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MemoryCausalLM, add_memory
from .configuration import InfiniteGPT2Config
from .modeling import InfiniteGPT2LMHeadModel
from .training_free import check_no_weights


def save_memory(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the memory weights and settings of ``model`` to ``directory``; returns the folder."""
    if not isinstance(model, MemoryCausalLM):
        raise ValueError(f"model has no memory to save: {type(model).__name__} (use add_memory first)")
    return model.save_memory(directory)


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The settings saved by save_memory (ValueError naming the file if it is missing or bad)."""
    path = Path(directory) / ADAPTER_CONFIG
    try:
        info = json.loads(path.read_text())
        info["memory_config"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} is not a memory adapter config written by save_memory: {err}") from err
    return info


def load_memory(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Give ``model`` (a base causal LM) the memory saved in ``directory``; returns it.

    The base model's class must be the one the adapter was saved from.
    """
    info = read_adapter_config(directory)
    if type(model).__name__ != info["base_model_class"]:
        raise ValueError(
            f"the memory adapter in {directory} was saved from a {info['base_model_class']} "
            f"({info.get('base_model_name_or_path')}), not a {type(model).__name__}"
        )
    if not isinstance(model, MemoryCausalLM):
        model = add_memory(model, **info["memory_config"])
    tensors = load_file(str(Path(directory) / ADAPTER_WEIGHTS))
    _load_ltm(model, {k.removeprefix("ltm."): v for k, v in tensors.items()}, directory)
    return model


def from_pretrained(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a full folder written by ``model.save_pretrained`` of a model with memory.

    The base model loads with AutoModelForCausalLM (kwargs pass through: dtype, device_map...),
    the memory settings come from its config (``infinite_memory``) and the ``ltm.*`` weights from
    its safetensors files. InfiniteGPT2 folders load with InfiniteGPT2LMHeadModel.from_pretrained.
    """
    config = AutoConfig.from_pretrained(path)
    settings = getattr(config, "infinite_memory", None)
    if not isinstance(settings, dict):
        raise ValueError(f"{path} has no memory settings (config.infinite_memory): not saved from add_memory")
    model = add_memory(AutoModelForCausalLM.from_pretrained(path, **kwargs), **settings)
    tensors = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            tensors.update(
                {k.removeprefix("ltm."): f.get_tensor(k) for k in f.keys() if k.startswith("ltm.")}
            )
    _load_ltm(model, tensors, path)
    return model


def load_model(path: str | os.PathLike, local_files_only: bool = False, **memory_overrides: Any) -> nn.Module:
    """Any supported causal LM folder (or hub name) as a model with memory.

    An ``infinite-gpt2`` folder or a plain GPT-2 one loads as InfiniteGPT2LMHeadModel; a folder
    saved from ``add_memory`` (GPT-2 included) loads with its memory (``from_pretrained``), where memory_overrides
    may change block_size and kl_weight only; any other causal LM gets a fresh memory
    (``add_memory``). memory_overrides: MemoryConfig keywords (block_size, ...).
    """
    local = {"local_files_only": local_files_only}
    config = AutoConfig.from_pretrained(path, **local)
    settings = getattr(config, "infinite_memory", None)
    plain_gpt2 = config.model_type == "gpt2" and not isinstance(settings, dict)  # (not from add_memory)
    if plain_gpt2 or config.model_type == InfiniteGPT2Config.model_type:
        return InfiniteGPT2LMHeadModel.from_pretrained(path, **local, **memory_overrides)
    if isinstance(settings, dict):
        fixed = sorted(
            k
            for k, v in memory_overrides.items()
            if k not in ("block_size", "kl_weight") and settings.get(k) != v
        )
        if fixed:
            raise ValueError(f"{path} already has a memory; these settings cannot be overridden: {fixed}")
        model = from_pretrained(path, **local)
        layout = model.decoder_layout
        new = replace(model.memory_config, **memory_overrides)
        model.memory_config = new.resolved(len(layout.layers), layout.max_positions)
        return model
    return add_memory(AutoModelForCausalLM.from_pretrained(path, **local), **memory_overrides)


def _load_ltm(model: MemoryCausalLM, tensors: dict, source: Any) -> None:
    if model.training_free is not None:
        check_no_weights(tensors, source)
    expected = set(model.ltm.state_dict())
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(
            f"memory weights in {source} do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.ltm.load_state_dict(tensors)


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "from_pretrained",
    "load_memory",
    "read_adapter_config",
    "save_memory",
]
