"""InfiniteGPT2Config: a GPT-2 config plus the ∞-former long-term memory fields.

Defaults follow the paper's GPT-2 fine-tuning recipe (PAPER §2-5): N = M = 512
basis functions / samples, τ = 0.5, RBF widths {0.005, 0.01}, ridge λ = 0.5,
sticky memories over D = 128 bins, gated inputs, σ² >= 1e-4, KL toward
σ₀ = 0.05 with weight 1e-6, sequential blocks of 512 tokens.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import GPT2Config

from ..attention import LTMConfig
from .config import MemoryConfig


@strict
class InfiniteGPT2Config(GPT2Config):
    """GPT2Config + long-term memory (∞-former) hyperparameters.

    num_basis (N), num_samples (M), tau (τ), widths (σ_k of the RBFs),
    ridge_lambda (λ), num_bins (D, sticky memories), sticky, gate,
    normalizer ("softmax" | "sparsemax"), min_sigma2, kl_sigma0 (σ₀),
    kl_weight (weight of the KL regularizer in the training loss),
    block_size (L: tokens per short-term block; None -> min(512, n_positions)),
    memory_layers (indices of the GPT-2 layers that get a memory; None -> all).
    """

    model_type = "infinite-gpt2"

    num_basis: int = 512
    num_samples: int = 512
    tau: float = 0.5
    widths: list[float] | tuple[float, ...] | str = (0.005, 0.01)  # or "auto"
    ridge_lambda: float = 0.5
    num_bins: int = 128
    sticky: bool = True
    gate: bool = True
    normalizer: str = "softmax"
    min_sigma2: float = 1e-4
    kl_sigma0: float = 0.05
    kl_weight: float = 1e-6
    block_size: int | None = None
    memory_layers: list[int] | None = None
    schedule: str = "fixed"  # LTMConfig.schedule
    power: float = 2.0  # LTMConfig.power

    def __post_init__(self, **kwargs: Any) -> None:
        if self.block_size is None:
            self.block_size = min(512, self.n_positions)
        if not isinstance(self.widths, str):
            self.widths = [float(w) for w in self.widths]
        if self.memory_layers is not None:
            self.memory_layers = [int(i) for i in self.memory_layers]
        kwargs.pop("model_type", None)  # a plain GPT-2 config.json says "gpt2": this one is "infinite-gpt2"
        super().__post_init__(**kwargs)
        self.check_memory_fields()

    def check_memory_fields(self) -> None:
        """Raise ValueError if a memory field is invalid (also called by the model, after overrides)."""
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {self.block_size!r}")
        if self.block_size > self.n_positions:
            raise ValueError(
                f"block_size ({self.block_size}) is longer than the model's positions "
                f"(n_positions={self.n_positions}): a short-term block must fit GPT-2's position embeddings"
            )
        if self.memory_layers is not None:
            bad = [i for i in self.memory_layers if not 0 <= i < self.n_layer]
            if bad or len(set(self.memory_layers)) != len(self.memory_layers):
                raise ValueError(
                    f"memory_layers must be distinct layer indices in [0, {self.n_layer}), got {self.memory_layers!r}"
                )
        if not (self.kl_weight >= 0):
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight!r}")
        self.ltm_config()  # validates the LTM fields (N, M, τ, widths, λ, D, normalizer, ...)

    @property
    def memory_layer_ids(self) -> list[int]:
        """The GPT-2 layers that get a long-term memory, in order."""
        return list(range(self.n_layer)) if self.memory_layers is None else sorted(self.memory_layers)

    def memory_fields(self) -> dict[str, Any]:
        """The memory settings as MemoryConfig keywords (the names add_memory takes)."""
        return {f.name: getattr(self, f.name) for f in fields(MemoryConfig)}

    def ltm_config(self) -> LTMConfig:
        """The LTMConfig of each layer's LongTermAttention (output projection zero-initialised)."""
        return MemoryConfig(**self.memory_fields()).ltm_config(self.n_embd, self.n_head)


__all__ = ["InfiniteGPT2Config"]
