"""MemoryConfig: the ∞-former memory settings attached to a Hugging Face causal LM.

The keyword names are those of ``InfiniteGPT2Config`` and of ``add_memory(model, **memory_config)``.
Defaults follow the paper's GPT-2 fine-tuning recipe (PAPER §2-5): N = M = 512, τ = 0.5, RBF
widths {0.005, 0.01}, ridge λ = 0.5, sticky memories over D = 128 bins, gated inputs,
σ² >= 1e-4, KL toward σ₀ = 0.05 with weight 1e-6, sequential blocks of 512 tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..attention import LTMConfig
from ..utils import check_int, config_from_dict


@dataclass
class MemoryConfig:
    """Long-term memory of every (or each listed) decoder layer, paper symbols in brackets.

    block_size (L): tokens per short-term block; None -> min(512, the model's positions).
    memory_layers: indices of the decoder layers that get a memory; None -> all.
    kl_weight: weight of the KL regularizer in the training loss.
    The other fields are those of LTMConfig: num_basis (N), num_samples (M), tau (τ), widths,
    ridge_lambda (λ), num_bins (D), sticky, gate, normalizer, min_sigma2, kl_sigma0 (σ₀).
    """

    block_size: int | None = None
    num_basis: int = 512
    num_samples: int = 512
    tau: float = 0.5
    widths: tuple[float, ...] | str = (0.005, 0.01)  # or "auto"
    ridge_lambda: float = 0.5
    num_bins: int = 128
    sticky: bool = True
    gate: bool = True
    normalizer: str = "softmax"
    min_sigma2: float = 1e-4
    kl_sigma0: float = 0.05
    kl_weight: float = 1e-6
    memory_layers: tuple[int, ...] | None = None
    schedule: str = "fixed"  # LTMConfig.schedule
    power: float = 2.0  # LTMConfig.power

    def __post_init__(self) -> None:
        if self.block_size is not None:
            check_int("block_size", self.block_size, symbol="L")
        if not isinstance(self.widths, str):
            self.widths = tuple(float(w) for w in self.widths)
        if self.memory_layers is not None:
            for i in self.memory_layers:
                check_int("memory_layers", i, minimum=0)
            if len(set(self.memory_layers)) != len(self.memory_layers):
                raise ValueError(
                    f"memory_layers must be distinct layer indices, got {list(self.memory_layers)}"
                )
            self.memory_layers = tuple(sorted(int(i) for i in self.memory_layers))
        if not (self.kl_weight >= 0) or not math.isfinite(self.kl_weight):
            raise ValueError(f"kl_weight must be a finite number >= 0, got {self.kl_weight!r}")
        self.ltm_config(d_model=2, n_heads=1)  # validates N, M, τ, widths, λ, D, ...

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
        return MemoryConfig(**{**asdict(self), "block_size": block})

    def layer_ids(self, num_layers: int) -> list[int]:
        """The decoder layers that get a long-term memory, in order."""
        return list(range(num_layers)) if self.memory_layers is None else list(self.memory_layers)

    def ltm_config(self, d_model: int, n_heads: int) -> LTMConfig:
        """The LTMConfig of each layer's LongTermAttention (output projection zero-initialised)."""
        return LTMConfig(
            d_model=d_model,
            n_heads=n_heads,
            num_basis=self.num_basis,
            num_samples=self.num_samples,
            tau=self.tau,
            widths=self.widths,
            ridge_lambda=self.ridge_lambda,
            sticky=self.sticky,
            num_bins=self.num_bins,
            normalizer=self.normalizer,
            min_sigma2=self.min_sigma2,
            kl_sigma0=self.kl_sigma0,
            gate=self.gate,
            zero_init_output=True,
            check_finite=False,
            schedule=self.schedule,
            power=self.power,
        )

    # ------------------------------------------------------------------ serialisation

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not isinstance(self.widths, str):
            d["widths"] = list(self.widths)
        d["memory_layers"] = None if self.memory_layers is None else list(self.memory_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemoryConfig:
        """Build from a dict; unknown keys raise a ValueError naming them."""
        d = dict(d)
        if d.get("memory_layers") is not None:
            d["memory_layers"] = tuple(d["memory_layers"])
        return config_from_dict(cls, d)


__all__ = ["MemoryConfig"]
