"""ModelConfig: the language model's hyperparameters, validated once, and the memory types."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..attention import LTMConfig
from ..utils import check_int, config_from_dict

MEMORY_TYPES = ("xl", "compressive", "infinite", "infinite_sticky")


# ----------------------------------------------------------------------------- config


@dataclass
class ModelConfig:
    """Hyperparameters of the LM. ltm_* are the LTM's (N = ltm_num_basis, M = ltm_num_samples,
    τ = ltm_tau, σ_k = ltm_widths, λ = ltm_ridge_lambda, D = ltm_num_bins, σ₀ = kl_sigma0)."""

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
    ltm_num_basis: int = 128
    ltm_num_samples: int = 128
    ltm_tau: float = 0.5
    ltm_widths: tuple[float, ...] | str = (0.01, 0.05)  # or "auto" (LTMConfig)
    ltm_ridge_lambda: float = 1.0
    ltm_num_bins: int = 128
    ltm_normalizer: str = "softmax"
    ltm_gate: bool = True
    kl_weight: float = 1e-6
    kl_sigma0: float = 0.05
    ltm_min_sigma2: float = 1e-4
    tie_weights: bool = True
    max_segment_len: int | None = None
    ltm_schedule: str = "fixed"  # LTMConfig.schedule
    ltm_power: float = 2.0  # LTMConfig.power

    def __post_init__(self) -> None:
        if not isinstance(self.ltm_widths, str):
            self.ltm_widths = tuple(float(w) for w in self.ltm_widths)
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
        if self.memory_type not in MEMORY_TYPES:
            raise ValueError(f"memory_type must be one of {list(MEMORY_TYPES)}, got {self.memory_type!r}")
        check_int("cmem_len", self.cmem_len, 0)
        check_int("compression_rate", self.compression_rate, 1)
        if self.memory_type == "compressive":
            if self.cmem_len < 1:
                raise ValueError(f"cmem_len must be >= 1 for memory_type 'compressive', got {self.cmem_len}")
            if self.mem_len < self.compression_rate:
                raise ValueError(
                    f"mem_len ({self.mem_len}) must be >= compression_rate ({self.compression_rate}) "
                    "for memory_type 'compressive' (the STM must hold a full group of c vectors)"
                )
        for name in ("recon_weight", "kl_weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not (value >= 0) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite float >= 0, got {value!r}")
        if not isinstance(self.tie_weights, bool) or not isinstance(self.ltm_gate, bool):
            raise ValueError("tie_weights and ltm_gate must be bools")
        if self.max_segment_len is not None:
            check_int("max_segment_len", self.max_segment_len, 1)
        try:  # the LTM's own checks, also for xl/compressive so configs stay comparable
            self.ltm_config()
        except ValueError as err:
            raise ValueError(f"invalid ltm_* setting: {err}") from err

    @property
    def uses_ltm(self) -> bool:
        return self.memory_type in ("infinite", "infinite_sticky")

    @property
    def uses_cmem(self) -> bool:
        return self.memory_type == "compressive"

    def ltm_config(self) -> LTMConfig:
        """The LTMConfig of every layer's LongTermAttention (sticky iff infinite_sticky)."""
        return LTMConfig(
            d_model=self.d_model,
            n_heads=self.n_heads,
            num_basis=self.ltm_num_basis,
            num_samples=self.ltm_num_samples,
            tau=self.ltm_tau,
            widths=self.ltm_widths,
            ridge_lambda=self.ltm_ridge_lambda,
            sticky=self.memory_type == "infinite_sticky",
            num_bins=self.ltm_num_bins,
            normalizer=self.ltm_normalizer,
            min_sigma2=self.ltm_min_sigma2,
            kl_sigma0=self.kl_sigma0,
            gate=self.ltm_gate,
            schedule=self.ltm_schedule,
            power=self.ltm_power,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not isinstance(self.ltm_widths, str):
            d["ltm_widths"] = list(self.ltm_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return config_from_dict(cls, d)
