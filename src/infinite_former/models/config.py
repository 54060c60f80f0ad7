"""ModelConfig: the language model's hyperparameters, validated once (the memory type checks its own).

The memory's settings are one field, ``ltm`` (an LTMConfig, attention.py); ModelConfig adds the LM's
own: sizes, the short-term memory, the memory type and the compressive baseline's settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..attention import (
    FORMAT_VERSION,
    LEGACY_FORMAT,
    LTM_DEFAULTS_02,
    LTMConfig,
    host_ltm,
    legacy_keywords,
    read_host_dict,
    saved_format,
)
from ..utils import check_field_types, check_int, config_from_dict
from .registry import memory_type_class

# The LM's preset of the memory's settings (LTMConfig's defaults are the GPT-2 recipe's).
LTM_PRESET: dict[str, Any] = {"num_basis": 128, "widths": (0.01, 0.05), "ridge_lambda": 1.0}
# 0.2 wrote the settings flat, under these names; they and their 0.2 defaults convert old files.
LEGACY_02: dict[str, str] = {
    "ltm_num_basis": "num_basis",
    "ltm_num_samples": "num_samples",
    "ltm_tau": "tau",
    "ltm_widths": "widths",
    "ltm_ridge_lambda": "ridge_lambda",
    "ltm_num_bins": "num_bins",
    "ltm_normalizer": "normalizer",
    "ltm_gate": "gate",
    "kl_weight": "kl_weight",
    "kl_sigma0": "kl_sigma0",
    "ltm_min_sigma2": "min_sigma2",
}
DEFAULTS_02: dict[str, Any] = {**LTM_DEFAULTS_02, **LTM_PRESET, "num_samples": 128}


# ----------------------------------------------------------------------------- config


@legacy_keywords(LEGACY_02, DEFAULTS_02)
@dataclass
class ModelConfig:
    """Hyperparameters of the LM. ``ltm``: the ∞-former memory's settings (an LTMConfig, or a dict of
    its settings over LTM_PRESET); its ``sticky`` follows memory_type (True iff infinite_sticky)."""

    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_inner: int = 256
    dropout: float = 0.1
    mem_len: int = 128
    memory_type: str = "infinite_sticky"
    cmem_len: int = 64
    compression_rate: int = 2
    recon_weight: float = 1.0
    tie_weights: bool = True
    max_segment_len: int | None = None
    ltm: LTMConfig = field(default_factory=lambda: LTMConfig(**LTM_PRESET))

    def __post_init__(self) -> None:
        self.ltm = host_ltm(self.ltm, LTM_PRESET, "ltm")
        check_field_types(self)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_inner"):
            check_int(name, getattr(self, name), 1)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}), "
                f"got remainder {self.d_model % self.n_heads}"
            )
        if self.d_model % 2:
            raise ValueError(f"d_model must be even (sinusoidal relative positions), got {self.d_model}")
        if not isinstance(self.dropout, (int, float)) or not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        check_int("mem_len", self.mem_len, 0)
        kind = memory_type_class(self.memory_type)
        check_int("cmem_len", self.cmem_len, 0)
        check_int("compression_rate", self.compression_rate, 1)
        kind.check_config(self)  # the memory type's own requirements
        if (
            not isinstance(self.recon_weight, (int, float))
            or not (self.recon_weight >= 0)
            or not math.isfinite(self.recon_weight)
        ):
            raise ValueError(f"recon_weight must be a finite float >= 0, got {self.recon_weight!r}")
        if not isinstance(self.tie_weights, bool):
            raise ValueError(f"tie_weights must be a bool, got {self.tie_weights!r}")
        if self.max_segment_len is not None:
            check_int("max_segment_len", self.max_segment_len, 1)
        sticky = self.memory_type == "infinite_sticky"
        if self.ltm.sticky != sticky:
            self.ltm = replace(self.ltm, sticky=sticky)  # the memory type decides

    @property
    def uses_ltm(self) -> bool:
        return self.memory_type in ("infinite", "infinite_sticky")

    @property
    def uses_cmem(self) -> bool:
        return self.memory_type == "compressive"

    def ltm_config(self) -> LTMConfig:
        """The LTMConfig of every layer's LongTermAttention: ``ltm`` bound to d_model, n_heads."""
        return self.ltm.bind(self.d_model, self.n_heads)

    def to_dict(self) -> dict[str, Any]:
        """The saved form: the format version, the LM's fields and the memory's settings nested."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "ltm"}
        return {"format_version": FORMAT_VERSION, **d, "ltm": self.ltm.settings()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Read a saved ModelConfig (format 0.3, or 0.2 converted); every field must be there."""
        version = saved_format(d, "ModelConfig")
        d = read_host_dict(d, [f.name for f in fields(cls)], LEGACY_02, DEFAULTS_02, "ModelConfig")
        if version != LEGACY_FORMAT and d["ltm"].sticky != (d.get("memory_type") == "infinite_sticky"):
            raise ValueError(
                f"ModelConfig: ltm.sticky={d['ltm'].sticky} contradicts memory_type={d.get('memory_type')!r} "
                "(sticky iff infinite_sticky)"
            )
        return config_from_dict(cls, d)
