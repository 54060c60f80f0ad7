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
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.auto_factory import _get_model_class

from ..provenance import check_fingerprint, load_safetensors_file
from .causal_lm import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MemoryCausalLM,
    add_memory,
    build_memory,
    install_memory,
    memory_settings_of,
)
from .gpt2_config import InfiniteGPT2Config
from .layout import base_fingerprint, find_layout
from .memory_config import MemoryConfig
from .modeling import InfiniteGPT2LMHeadModel
from .training_free import TrainingFreeConfig, TrainingFreeMemory, check_no_weights


def save_memory(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the memory weights and settings of ``model`` to ``directory``; returns the folder."""
    if not isinstance(model, MemoryCausalLM):
        raise ValueError(f"model has no memory to save: {type(model).__name__} (use add_memory first)")
    return model.save_memory(directory)


def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The settings saved by save_memory, ``memory_config`` read as a MemoryConfig (format 0.3, or
    0.2 converted). ValueError naming the file and the field if it is missing, bad or mistyped."""
    path = Path(directory) / ADAPTER_CONFIG
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a memory adapter config written by save_memory: {err}") from err
    if not isinstance(info, dict):
        raise ValueError(f"{path} is not a memory adapter config written by save_memory: not a JSON object")
    for key in ("base_model_class", "memory_config"):
        if key not in info:
            raise ValueError(
                f"{path} lacks the field {key!r}: not a memory adapter config written by save_memory"
            )
    if not isinstance(info["base_model_class"], str):
        raise ValueError(f"{path}: base_model_class must be a string, got {info['base_model_class']!r}")
    info["memory_config"], info["training_free"] = memory_settings_of(
        info["memory_config"], f"{path}: memory_config"
    )
    host = info.get("memory_host")  # d_model, n_heads of the memory's host (absent in 0.2 adapters)
    if host is not None and (
        not isinstance(host, dict)
        or sorted(host) != ["d_model", "n_heads"]
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in host.values())
    ):
        raise ValueError(f"{path}: memory_host must be {{'d_model': int, 'n_heads': int}}, got {host!r}")
    return info


def load_memory(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Give ``model`` (a causal LM) the memory saved in ``directory``; returns it.

    The base model's class and shape (hidden size, heads, layers) must be those the adapter was
    saved from. A model that already has a memory takes the adapter's weights only if its settings
    are the adapter's; otherwise it is refused (never a mix). Everything (settings, the file,
    shapes, finite values) is checked before the model is changed: on any error it is exactly as it was.
    """
    info = read_adapter_config(directory)
    saved_class = info.get("base_model_class")
    if type(model).__name__ != saved_class:
        raise ValueError(
            f"the memory adapter in {directory} was saved from a {saved_class} "
            f"({info.get('base_model_name_or_path')}), not a {type(model).__name__}"
        )
    saved: MemoryConfig = info["memory_config"]
    free = info["training_free"]
    layout = model.decoder_layout if isinstance(model, MemoryCausalLM) else find_layout(model)
    what = f"the memory adapter in {directory}"
    if info.get("base_model") is not None:
        check_fingerprint(info["base_model"], base_fingerprint(model, layout), what)
    elif info.get("memory_host") is not None:  # adapters saved before the base model's fingerprint
        here = {"d_model": layout.hidden_size, "n_heads": layout.num_heads}
        if here != info["memory_host"]:
            raise ValueError(
                f"{what} was trained on a model with {info['memory_host']}, "
                f"this {type(model).__name__} has {here}"
            )
    tensors = load_safetensors_file(Path(directory) / ADAPTER_WEIGHTS, "memory adapter")
    if isinstance(model, MemoryCausalLM):
        differ = config_differences(
            model.memory_config, saved.resolved(len(layout.layers), layout.max_positions)
        )
        has = None if model.training_free is None else model.training_free.to_dict()
        wants = None if free is None else free.to_dict()
        if has != wants:
            differ["training_free"] = (has, wants)
        if differ:
            raise ValueError(
                f"the model already has a memory whose settings differ from the adapter's in {directory}: "
                f"{differ}; load the adapter onto the base model (without a memory)"
            )
    config, ltm = build_memory(model, saved, free)
    _load_ltm(ltm, {k.removeprefix("ltm."): v for k, v in tensors.items()}, directory)
    install_memory(model, config, ltm, free)
    return model


def from_pretrained(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a full folder written by ``model.save_pretrained`` of a model with memory.

    The base model loads with AutoModelForCausalLM (kwargs pass through: dtype, device_map...),
    the memory settings come from its config (``infinite_memory``) and the ``ltm.*`` weights from
    its safetensors files, which are read and checked (readable, finite, fitting the model)
    before the memory is attached. InfiniteGPT2 folders load with InfiniteGPT2LMHeadModel.from_pretrained.
    """
    return _from_pretrained(path, None, kwargs)


def _from_pretrained(path: str | os.PathLike, overrides: MemoryConfig | None, kwargs: dict[str, Any]):
    """from_pretrained; ``overrides``: the memory settings to use in place of the saved ones."""
    config = AutoConfig.from_pretrained(path, **_hub_kwargs(kwargs))
    settings = getattr(config, "infinite_memory", None)
    if not isinstance(settings, dict):
        raise ValueError(f"{path} has no memory settings (config.infinite_memory): not saved from add_memory")
    saved, free = memory_settings_of(settings, f"{path}: config.json infinite_memory")
    memory_config = overrides or saved
    tensors = {}
    for file in sorted(Path(path).glob("*.safetensors")):  # read and checked before the base model loads
        tensors.update(
            {
                k.removeprefix("ltm."): v
                for k, v in load_safetensors_file(file, "model weights").items()
                if k.startswith("ltm.")
            }
        )
    model = _base_class(config).from_pretrained(path, **kwargs)
    model.__class__ = model.__class__.__bases__[0]  # the base class (the loader only ignores ltm.*)
    memory_config, ltm = build_memory(model, memory_config, free)
    _load_ltm(ltm, tensors, path)
    install_memory(model, memory_config, ltm, free)
    return model


def _base_class(config: Any) -> type:
    """The AutoModelForCausalLM class of ``config``, as a loader that expects the ``ltm.*`` weights
    beside the base model's (they are loaded by from_pretrained itself: no 'unexpected keys' report)."""
    base = _get_model_class(config, AutoModelForCausalLM._model_mapping)
    ignore = {*(base._keys_to_ignore_on_load_unexpected or ()), r"^ltm\."}
    return type(base.__name__, (base,), {"_keys_to_ignore_on_load_unexpected": ignore})


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("local_files_only", "revision", "token", "cache_dir", "trust_remote_code")
    return {k: kwargs[k] for k in keys if k in kwargs}


def load_model(path: str | os.PathLike, local_files_only: bool = False, **memory_overrides: Any) -> nn.Module:
    """Any supported causal LM folder (or hub name) as a model with memory.

    An ``infinite-gpt2`` folder or a plain GPT-2 one loads as InfiniteGPT2LMHeadModel (a plain GPT-2 with
    ``training_free``: through ``add_memory``, as any other model); a folder
    saved from ``add_memory`` (GPT-2 included) loads with its memory (``from_pretrained``), where memory_overrides
    may change block_size and kl_weight only; any other causal LM gets a fresh memory
    (``add_memory``). memory_overrides: add_memory keywords (block_size, ..., training_free), checked before
    any weights are read.
    """
    local = {"local_files_only": local_files_only}
    config = AutoConfig.from_pretrained(path, **local)
    settings = getattr(config, "infinite_memory", None)
    overrides = dict(memory_overrides)
    free = TrainingFreeConfig.of(overrides.pop("training_free", False))
    plain_gpt2 = config.model_type == "gpt2" and not isinstance(settings, dict)  # (not from add_memory)
    if config.model_type == InfiniteGPT2Config.model_type and free is not None:
        raise ValueError(f"{path} holds an infinite-gpt2 model with trained memory weights: no training_free")
    if (plain_gpt2 and free is None) or config.model_type == InfiniteGPT2Config.model_type:
        return InfiniteGPT2LMHeadModel.from_pretrained(path, **local, **overrides)
    if isinstance(settings, dict):
        saved, saved_free = memory_settings_of(settings, f"{path}: config.json infinite_memory")
        wanted = MemoryConfig.from_keywords(**{**_keywords(saved), **overrides})
        fixed = sorted(
            k for k in config_differences(saved, wanted) if k not in ("block_size", "ltm.kl_weight")
        )
        if "training_free" in memory_overrides and free != saved_free:
            fixed.append("training_free")
        if fixed:
            names = [k.removeprefix("ltm.") for k in fixed]
            raise ValueError(f"{path} already has a memory; these settings cannot be overridden: {names}")
        return _from_pretrained(path, wanted, local)
    MemoryConfig.from_keywords(**overrides)  # bad keywords fail before the weights load
    return add_memory(
        AutoModelForCausalLM.from_pretrained(path, **local), training_free=free or False, **overrides
    )


def _keywords(config: MemoryConfig) -> dict[str, Any]:
    """add_memory's keywords of a MemoryConfig."""
    return {"block_size": config.block_size, "memory_layers": config.memory_layers, **config.ltm.settings()}


def config_differences(a: MemoryConfig, b: MemoryConfig) -> dict[str, tuple[Any, Any]]:
    """{field: (a's, b's)} where two memory configs differ (the settings as ``ltm.<name>``)."""
    flat = [
        {
            **{k: v for k, v in c.to_dict().items() if k != "ltm"},
            **{f"ltm.{k}": v for k, v in c.ltm.settings().items()},
        }
        for c in (a, b)
    ]
    return {k: (flat[0][k], flat[1][k]) for k in flat[0] if flat[0][k] != flat[1][k]}


def _load_ltm(ltm: nn.ModuleList, tensors: dict[str, Tensor], source: Any) -> None:
    """Load ``tensors`` into new memory modules, after checking names and shapes (ValueError);
    a training-free memory takes none."""
    if any(isinstance(m, TrainingFreeMemory) for m in ltm):
        check_no_weights(tensors, source)
    expected = ltm.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"memory weights in {source} do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    shapes = [
        f"{k}: saved {tuple(tensors[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if tensors[k].shape != v.shape
    ]
    if shapes:
        raise ValueError(f"memory weights in {source} do not fit the model's shapes: {shapes[:5]}")
    ltm.load_state_dict(tensors)


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "from_pretrained",
    "load_memory",
    "read_adapter_config",
    "save_memory",
]
