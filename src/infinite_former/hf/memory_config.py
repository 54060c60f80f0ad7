"""MemoryConfig: the ∞-former memory attached to a Hugging Face causal LM (``add_memory``).

The memory's settings are one field, ``ltm`` (an LTMConfig, attention.py); MemoryConfig adds what is
the host's: the block size and the memory layers. ``add_memory(model, **keywords)`` takes both flat:
``MemoryConfig.from_keywords``. Defaults follow the paper's GPT-2 fine-tuning recipe (PAPER §2-5):
LTMConfig's defaults with M = 512 samples, W_O zero-initialised, sequential blocks of 512 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..attention import (
    FORMAT_VERSION,
    LTM_DEFAULTS_02,
    SETTINGS,
    LTMConfig,
    host_ltm,
    legacy_keywords,
    read_host_dict,
    split_settings,
)
from ..utils import check_int

# The Hugging Face preset of the memory's settings: the model starts as the base model (W_O = 0).
LTM_PRESET: dict[str, Any] = {"num_samples": 512, "zero_init_output": True, "check_finite": False}
# 0.2 wrote the settings flat, under LTMConfig's names; these and their 0.2 defaults convert old files.
LEGACY_02: dict[str, str] = {
    name: name
    for name in (
        "num_basis",
        "num_samples",
        "tau",
        "widths",
        "ridge_lambda",
        "num_bins",
        "sticky",
        "gate",
        "normalizer",
        "min_sigma2",
        "kl_sigma0",
        "kl_weight",
    )
}
DEFAULTS_02: dict[str, Any] = {**LTM_DEFAULTS_02, **LTM_PRESET}


@legacy_keywords(LEGACY_02, DEFAULTS_02)
@dataclass
class MemoryConfig:
    """Long-term memory of every (or each listed) decoder layer.

    block_size (L): tokens per short-term block; None -> min(512, the model's positions).
    memory_layers: indices of the decoder layers that get a memory; None -> all.
    ltm: the memory's settings (an LTMConfig, or a dict of its settings over LTM_PRESET).
    """

    block_size: int | None = None
    memory_layers: tuple[int, ...] | None = None
    ltm: LTMConfig = field(default_factory=lambda: LTMConfig(**LTM_PRESET))

    def __post_init__(self) -> None:
        self.ltm = host_ltm(self.ltm, LTM_PRESET, "ltm")
        if self.block_size is not None:
            check_int("block_size", self.block_size, symbol="L")
        if self.memory_layers is not None:
            if not isinstance(self.memory_layers, (list, tuple)):
                raise ValueError(f"memory_layers must be a list of layer indices, got {self.memory_layers!r}")
            for i in self.memory_layers:
                check_int("memory_layers", i, minimum=0)
            if len(set(self.memory_layers)) != len(self.memory_layers):
                raise ValueError(
                    f"memory_layers must be distinct layer indices, got {list(self.memory_layers)}"
                )
            self.memory_layers = tuple(sorted(int(i) for i in self.memory_layers))

    @classmethod
    def from_keywords(cls, **keywords: Any) -> MemoryConfig:
        """``add_memory``'s flat keywords: block_size, memory_layers, ltm and any LTMConfig setting
        (num_basis, tau, ...; over ``ltm`` when both are given). An unknown keyword is a ValueError."""
        settings, own = split_settings(keywords)
        unknown = sorted(set(own) - {f.name for f in fields(cls)})
        if unknown:
            known = sorted({f.name for f in fields(cls)} | set(SETTINGS))
            raise ValueError(f"unknown memory settings {unknown}; known: {known}")
        ltm = own.pop("ltm", None)
        base = ltm.settings() if isinstance(ltm, LTMConfig) else {**LTM_PRESET, **(ltm or {})}
        return cls(**own, ltm={**base, **settings})

    # ------------------------------------------------------------------ model-dependent checks

    def resolved(self, num_layers: int, max_positions: int | None) -> MemoryConfig:
        """This config with block_size filled in, checked against a model's layers and positions."""
        block = self.block_size if self.block_size is not None else min(512, max_positions or 512)
        if max_positions is not None and block > max_positions:
            raise ValueError(
                f"block_size ({block}) is longer than the model's positions ({max_positions}): "
                "a short-term block must fit the model's position range"
            )
        if self.memory_layers is not None:
            bad = [i for i in self.memory_layers if not 0 <= i < num_layers]
            if bad:
                raise ValueError(f"memory_layers must be layer indices in [0, {num_layers}), got {bad}")
        return replace(self, block_size=block)

    def layer_ids(self, num_layers: int) -> list[int]:
        """The decoder layers that get a long-term memory, in order."""
        return list(range(num_layers)) if self.memory_layers is None else list(self.memory_layers)

    def ltm_config(self, d_model: int, n_heads: int) -> LTMConfig:
        """The LTMConfig of each layer's LongTermAttention: ``ltm`` bound to the model's sizes."""
        return self.ltm.bind(d_model, n_heads)

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        """The saved form: the format version, block_size, memory_layers and the settings nested."""
        layers = None if self.memory_layers is None else list(self.memory_layers)
        return {
            "format_version": FORMAT_VERSION,
            "block_size": self.block_size,
            "memory_layers": layers,
            "ltm": self.ltm.settings(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], what: str = "memory config") -> MemoryConfig:
        """Read a saved MemoryConfig (format 0.3, or 0.2 converted): every field must be there, with
        its type; a missing, unknown or mistyped field, or an unknown version, is a ValueError."""
        d = read_host_dict(d, [f.name for f in fields(cls)], LEGACY_02, DEFAULTS_02, what)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{what} has unknown fields {unknown}")
        return cls(**d)


__all__ = ["MemoryConfig"]
