"""InfiniteGPT2Config: a GPT-2 config plus the ∞-former long-term memory.

The memory is the same MemoryConfig every model with memory has (memory_config.py): ``block_size``
and ``memory_layers`` are fields of their own, the memory's settings one field, ``ltm`` (a dict of
every LTMConfig setting, so that the config stays JSON), and ``memory_format_version`` the format
they were saved in. A 0.2 config.json held the settings flat (and omitted those equal to the 0.2
defaults); it is converted on load. Flat keywords (``InfiniteGPT2Config(num_basis=64)``, as
``add_memory`` takes them) are still accepted when building a config.
"""

from __future__ import annotations

import warnings
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import GPT2Config

from ..attention import FORMAT_VERSION, LEGACY_FORMAT, SETTINGS, LTMConfig, saved_format, split_settings
from ..utils import require_fields
from .memory_config import DEFAULTS_02, LEGACY_02, LTM_PRESET, MemoryConfig

_MEMORY_KEYS = ("block_size", "memory_layers", "ltm")


@strict
class InfiniteGPT2Config(GPT2Config):
    """GPT2Config + long-term memory (∞-former).

    block_size (L: tokens per short-term block; None -> min(512, n_positions)),
    memory_layers (indices of the GPT-2 layers that get a memory; None -> all),
    ltm (the LTMConfig settings as a dict: num_basis (N), num_samples (M), tau (τ), widths, ...;
    partial when building a config: the rest are the Hugging Face preset's).
    """

    model_type = "infinite-gpt2"

    block_size: int | None = None
    memory_layers: list[int] | None = None
    ltm: dict | None = None
    memory_format_version: str | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        flat, kwargs = split_settings(kwargs)
        version = saved_format({"format_version": self.memory_format_version or LEGACY_FORMAT}, "config")
        if version != LEGACY_FORMAT:  # a saved 0.3+ config: every setting of its version, none flat
            if flat:
                raise ValueError(f"config (memory format {version}) has flat memory fields {sorted(flat)}")
            settings = LTMConfig.from_dict(self.ltm, "config.ltm", version).settings()
        elif self.ltm is not None and not flat and set(self.ltm) == set(SETTINGS):
            settings = LTMConfig.from_dict(self.ltm, "config.ltm").settings()  # complete: as it is
        else:  # built from keywords, a plain GPT-2 config, or a 0.2 config.json (flat, defaults omitted)
            legacy = {LEGACY_02[k]: flat.pop(k) for k in list(flat) if k in LEGACY_02}
            base = DEFAULTS_02 if legacy else LTMConfig(**LTM_PRESET).settings()
            settings = LTMConfig(**{**base, **(self.ltm or {}), **legacy, **flat}).settings()
        self.ltm = settings
        self.memory_format_version = FORMAT_VERSION
        if self.block_size is None:
            self.block_size = min(512, self.n_positions)
        if self.memory_layers is not None:
            self.memory_layers = [int(i) for i in self.memory_layers]
        kwargs.pop("model_type", None)  # a plain GPT-2 config.json says "gpt2": this one is "infinite-gpt2"
        super().__post_init__(**kwargs)
        self.check_memory_fields()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> InfiniteGPT2Config:
        """transformers' from_dict, for a saved config.json: an ``infinite-gpt2`` one must hold every
        memory field of its format (0.3: block_size, memory_layers, ltm; 0.2: those flat), a plain
        GPT-2 one gets a fresh memory. Memory keywords (``from_pretrained(path, num_basis=16)``) are
        applied to the memory (``with_memory``), not set as stray attributes."""
        if config_dict.get("model_type") == cls.model_type:
            version = saved_format(
                {"format_version": config_dict.get("memory_format_version", LEGACY_FORMAT)}, "config.json"
            )
            own = ["block_size", "memory_layers"]
            need = [*own, *LEGACY_02] if version == LEGACY_FORMAT else [*own, "ltm"]
            require_fields(config_dict, need, f"config.json (memory format {version})")
        settings, kwargs = split_settings(kwargs)
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in _MEMORY_KEYS}
        out = super().from_dict(config_dict, **kwargs)
        config, unused = out if isinstance(out, tuple) else (out, None)
        if settings or own:
            config = config.with_memory(**own, **settings)
        return (config, unused) if isinstance(out, tuple) else config

    def with_memory(self, **keywords: Any) -> InfiniteGPT2Config:
        """This config with memory keywords (add_memory's: block_size, memory_layers, ltm (a partial
        dict or an LTMConfig) and LTMConfig settings) changed, checked; returns self."""
        settings, own = split_settings(keywords)
        unknown = sorted(set(own) - set(_MEMORY_KEYS))
        if unknown:
            raise ValueError(f"unknown memory settings {unknown}")
        given = own.pop("ltm", None) or {}
        given = given.settings() if isinstance(given, LTMConfig) else given
        ltm = LTMConfig(**{**self.ltm, **given, **settings}).settings()
        if "memory_layers" in own and own["memory_layers"] is not None:
            own["memory_layers"] = [int(i) for i in own["memory_layers"]]
        for key, value in {**own, "ltm": ltm}.items():
            setattr(self, key, value)
        self.check_memory_fields()
        return self

    def __getattr__(self, name: str) -> Any:  # only reached when the normal lookup fails
        ltm = self.__dict__.get("ltm")
        if name in SETTINGS and isinstance(ltm, dict):
            warnings.warn(
                f"InfiniteGPT2Config.{name} is deprecated since 0.3: read config.ltm[{name!r}]",
                DeprecationWarning,
                stacklevel=2,
            )
            return ltm[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SETTINGS:  # 0.2 set the flat field: the setting now changes in ``ltm`` (checked)
            warnings.warn(
                f"setting InfiniteGPT2Config.{name} is deprecated since 0.3: use config.with_memory({name}=...)",
                DeprecationWarning,
                stacklevel=2,
            )
            self.with_memory(**{name: value})
            return
        super().__setattr__(name, value)

    def to_diff_dict(self) -> dict[str, Any]:
        """transformers' diff against the defaults, but the memory is always written in full."""
        d = super().to_diff_dict()
        d.update({k: getattr(self, k) for k in (*_MEMORY_KEYS, "memory_format_version")})
        return d

    def check_memory_fields(self) -> None:
        """Raise ValueError if a memory field is invalid (also called by the model, after overrides)."""
        if self.block_size > self.n_positions:
            raise ValueError(
                f"block_size ({self.block_size}) is longer than the model's positions "
                f"(n_positions={self.n_positions}): a short-term block must fit GPT-2's position embeddings"
            )
        self.memory.resolved(self.n_layer, self.n_positions)

    @property
    def memory(self) -> MemoryConfig:
        """The memory settings as a MemoryConfig (checked)."""
        layers = None if self.memory_layers is None else tuple(self.memory_layers)
        return MemoryConfig(block_size=self.block_size, memory_layers=layers, ltm=LTMConfig(**self.ltm))

    @property
    def memory_layer_ids(self) -> list[int]:
        """The GPT-2 layers that get a long-term memory, in order."""
        return self.memory.layer_ids(self.n_layer)

    def memory_fields(self) -> dict[str, Any]:
        """Deprecated since 0.3 (use ``config.memory``): the memory settings as add_memory keywords."""
        warnings.warn(
            "InfiniteGPT2Config.memory_fields() is deprecated since 0.3: use config.memory (a MemoryConfig)",
            DeprecationWarning,
            stacklevel=2,
        )
        return {"block_size": self.block_size, "memory_layers": self.memory_layers, **self.ltm}

    def ltm_config(self) -> LTMConfig:
        """The LTMConfig of each layer's LongTermAttention."""
        return self.memory.ltm_config(self.n_embd, self.n_head)


__all__ = ["InfiniteGPT2Config"]
