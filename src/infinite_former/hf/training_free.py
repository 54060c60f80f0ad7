"""Training-free memory: the continuous memory read through a layer's own pretrained attention (∞-Video style).

    model = add_memory(model, training_free=True)                              # Gibbs density, α = 0.5
    model = add_memory(model, training_free={"density": "gaussian", "alpha": 0.3})
    model = add_memory(model, training_free={"combine": "softmax"})          # one softmax normaliser

No weight is added. Each memory layer absorbs the *input of its self-attention* (the normalised
hidden states its keys and values come from) into the continuous memory X̄(t) = Bᵀψ(t) (contraction
by τ, M samples, ridge refit; no gate, which would be a weight). A query x of the block reads it
through the layer's pretrained projections, per head h (keys and values repeated for grouped heads):

    X̄(t) = Bᵀψ(t), the memory's reconstructed token at t, on M grid points t_g of [0, 1];
    k_h(t) = W_K,h X̄(t), v_h(t) = W_V,h X̄(t) (biases, q/k norms as the layer has them), q_h = W_Q,h x;
    s(t) = q_h · k_h(t) / √d (the layer's own scaling), p(t) ∝ exp(s(t)) (Gibbs, normalised on the grid): z_h = Σ_g p(t_g) v_h(t_g);
    or p = 𝒩(μ, σ²), the mean and variance of that Gibbs density (moment-matched Gaussian):
    z_h = E_p[ψ]ᵀ (B W_V,h) + b_V,h in closed form;  m = W_O [z_1 ... z_H] (its bias included).

Combining the memory with the block's attention (rows whose memory is empty are the base model):

* ``combine="mix"``: one weight, (1 - α) a + α m (α = 0 is the base model);
* ``combine="softmax"``: one softmax normaliser over the block's keys and the memory, the memory
  counted as the mass of the ``n`` tokens it stands for (n = tokens absorbed so far). Per head,
  with the block's log-normaliser ℓ_a = log Σ_j exp(s_j) (its causal, rotated keys, as the layer
  attends) and the memory's ℓ_m = log((n / M) Σ_g exp(s(t_g))) (its M grid points standing for n
  tokens), the head's context is λ a_h + (1 - λ) z_h with 1 - λ = sigmoid(ℓ_m - ℓ_a), then W_O:
  exactly the attention over the block's keys plus n tokens spread over the memory's grid. The
  layer's attention does not return ℓ_a, so the memory recomputes the block's attention from the
  same projections: its keys and values from the block's KV cache (rotated by the layer), its
  queries rotated by the family's own ``apply_rotary_pos_emb``. α is not used. The memory's mass
  is that of its Gibbs scores for both densities (the Gaussian changes z_h, not the mass).

Positions: the memory has no token positions, only t. Its keys and the queries that read it are
*not* rotated (no rotary embedding, and a layer's q/k norms are applied as in the model), so the
memory is position-free to the model; absolute position embeddings (GPT-2) are already inside the
absorbed hidden states, as the positions of the tokens inside their block.

Measured on the small GPT-2 and Llama pretrained here (docs/results.md, benchmarks/training_free.py):
neither combine helps at α = 0.5 or under one softmax; α = 0.1 gains 0.002 nats/token.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from ..attention import LongTermAttention, LTMConfig, LTMRecord, ReadRecord
from ..basis import GaussianBasis
from ..continuous import NORMALIZERS
from ..memory import LTMState, bin_mass

DENSITIES = ("gibbs", "gaussian")
COMBINES = ("mix", "softmax")


@dataclass(frozen=True)
class TrainingFreeConfig:
    """density: "gibbs" (p ∝ exp(s(t)), numerical) or "gaussian" (moment-matched); combine: "mix"
    (weight alpha of the memory's output against the block's attention output) or "softmax" (one
    normaliser over the block and the memory, alpha unused)."""

    density: str = "gibbs"
    alpha: float = 0.5
    combine: str = "mix"

    def __post_init__(self) -> None:
        if self.density not in DENSITIES:
            raise ValueError(f"training_free density must be one of {DENSITIES}, got {self.density!r}")
        if not (0.0 <= self.alpha <= 1.0):
            raise ValueError(f"training_free alpha must be in [0, 1], got {self.alpha!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"training_free combine must be one of {COMBINES}, got {self.combine!r}")

    @classmethod
    def of(cls, value: Any) -> TrainingFreeConfig | None:
        """add_memory's ``training_free``: False/None -> None, True -> defaults, a dict or a config."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"density", "alpha", "combine"})
            if unknown:
                raise ValueError(
                    f"training_free: unknown settings {unknown}; expected density, alpha, combine"
                )
            return cls(**value)
        raise ValueError(f"training_free must be a bool or a dict of density/alpha/combine, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> TrainingFreeConfig:
        """The command-line form DENSITY[:ALPHA | :softmax]: "gibbs", "gaussian:0.3", "gibbs:softmax"."""
        density, _, how = text.partition(":")
        if how == "softmax":
            return cls(density=density, combine="softmax")
        try:
            return cls(density=density, **({"alpha": float(how)} if how else {}))
        except ValueError as e:
            if "training_free" in str(e):
                raise
            raise ValueError(f"training_free: expected DENSITY[:ALPHA | :softmax], got {text!r}") from e

    @property
    def label(self) -> str:
        """A short name: free_gibbs_a0.5, free_gaussian_softmax."""
        how = "softmax" if self.combine == "softmax" else f"a{self.alpha:g}"
        return f"free_{self.density}_{how}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemoryKeysValues:
    """What every read of one memory state needs, through a layer's W_K, W_V: keys and values of the
    reconstructed tokens on the grid (batch, H, G, d), and the values of the coefficients without
    the bias (batch, H, N, d) with the bias (1, H, 1, d) (for the Gaussian density)."""

    keys: Tensor
    values: Tensor
    basis_values: Tensor
    value_bias: Tensor

    def _map(self, fn: Any) -> MemoryKeysValues:
        return MemoryKeysValues(fn(self.keys), fn(self.values), fn(self.basis_values), self.value_bias)

    def select(self, rows: Tensor) -> MemoryKeysValues:
        return self._map(lambda t: t[rows])

    def detach(self) -> MemoryKeysValues:
        return MemoryKeysValues(
            *(t.detach() for t in (self.keys, self.values, self.basis_values, self.value_bias))
        )

    def to(self, *args: Any, **kwargs: Any) -> MemoryKeysValues:
        tensors = (self.keys, self.values, self.basis_values, self.value_bias)
        return MemoryKeysValues(*(t.to(*args, **kwargs) for t in tensors))


@dataclass(frozen=True)
class BlockAttention:
    """What one layer's attention did on the block's queries (the hook's view of it): its output a
    (batch, q, e); for combine="softmax" also the keys and values it attended to (batch, H_kv, S, d),
    as the layer cached them (rotated), which of them each query saw (batch, q, S) (causal, no
    padding) and the rotary (cos, sin) of the queries (None: no rotary, e.g. GPT-2)."""

    output: Tensor
    keys: Tensor | None = None
    values: Tensor | None = None
    key_mask: Tensor | None = None
    rotary: tuple[Tensor, Tensor] | None = None


class Projections:
    """A layer's pretrained query/key/value/output maps, found by name: q_proj, k_proj, v_proj,
    o_proj (Llama, Qwen, Mistral, OLMo, Granite, ...; ``dense`` as output: StableLM, Phi) or GPT-2's
    fused c_attn + c_proj; q_norm/k_norm applied when the layer has them."""

    def __init__(self, attention: nn.Module, config: Any, name: str) -> None:
        self.name = name
        self.rotate: Callable | None = getattr(
            sys.modules[type(attention).__module__], "apply_rotary_pos_emb", None
        )
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        get = lambda n: getattr(attention, n, None)  # noqa: E731
        self.fused = get("c_attn") if get("q_proj") is None else None
        self.q, self.k, self.v = get("q_proj"), get("k_proj"), get("v_proj")
        self.o = next((m for m in map(get, ("o_proj", "c_proj", "dense")) if m is not None), None)
        self.q_norm, self.k_norm = get("q_norm"), get("k_norm")
        self.scaling = float(getattr(attention, "scaling", None) or self.head_dim**-0.5)  # (Granite: its own)
        self.uses_rope = bool(getattr(attention, "use_rope", True))  # SmolLM3: layers without rotary
        self.rotary_dims = getattr(attention, "rotary_ndims", None)  # StableLM, Phi: the first dims rotated
        self.softcap = getattr(config, "attn_logit_softcapping", None)  # Gemma 2: tanh-capped scores
        if (self.fused is None and None in (self.q, self.k, self.v)) or self.o is None:
            raise ValueError(
                f"training_free is not supported for {name}: its attention {type(attention).__name__} has no "
                "separate q_proj/k_proj/v_proj (or GPT-2's c_attn) and o_proj/c_proj/dense to read the memory with"
            )

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.fused is not None:
            return self.fused(x).split(self.heads * self.head_dim, dim=-1)
        return self.q(x), self.k(x), self.v(x)

    def _heads(self, x: Tensor, heads: int, norm: nn.Module | None) -> Tensor:
        """(batch, n, heads·d) -> (batch, H, n, d): the layer's q/k norm, grouped heads repeated."""
        b, n, _ = x.shape
        if norm is not None and norm.weight.numel() != self.head_dim:
            x = norm(x)  # a norm over all heads (OLMo 2)
        x = x.view(b, n, heads, self.head_dim)
        if norm is not None and norm.weight.numel() == self.head_dim:
            x = norm(x)  # a norm per head (Qwen3)
        return x.transpose(1, 2).repeat_interleave(self.heads // heads, dim=1)

    def queries(self, x: Tensor) -> Tensor:
        return self._heads(self._split(x)[0], self.heads, self.q_norm)  # (batch, H, q, d)

    def check_softmax_combine(self) -> None:
        """ValueError where the block's attention cannot be recomputed exactly for combine='softmax'."""
        if self.softcap is not None:
            raise ValueError(
                f"training_free combine='softmax' is not supported for {self.name}: its attention caps its "
                f"scores (attn_logit_softcapping={self.softcap}); use combine='mix'"
            )

    def rotated(self, q: Tensor, rotary: tuple[Tensor, Tensor] | None) -> Tensor:
        """Queries (batch, H, q, d) rotated as the layer rotates them (its family's apply_rotary_pos_emb,
        on the first rotary_ndims dimensions where the layer has them)."""
        if rotary is None or not self.uses_rope:
            return q
        if self.rotate is None:
            raise ValueError(
                f"training_free combine='softmax' is not supported for {self.name}: its attention is given "
                "rotary embeddings but its module has no apply_rotary_pos_emb to rotate the queries with"
            )
        if self.rotary_dims is not None:
            part, rest = q[..., : self.rotary_dims], q[..., self.rotary_dims :]
            return torch.cat([self.rotate(part, part, *rotary)[0], rest], dim=-1)
        return self.rotate(q, q, *rotary)[0]

    def block_keys_values(self, block: BlockAttention) -> tuple[Tensor, Tensor]:
        """The block's cached keys and values (batch, H_kv, S, d) -> (batch, H, S, d) (grouped heads repeated)."""
        repeat = self.heads // block.keys.shape[1]
        return block.keys.repeat_interleave(repeat, dim=1), block.values.repeat_interleave(repeat, dim=1)

    def keys_values(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of tokens (batch, n, e) as the layer computes them: (batch, H, n, d) each."""
        _, k, v = self._split(tokens)
        return self._heads(k, self.kv_heads, self.k_norm), self._heads(v, self.kv_heads, None)

    def values_without_bias(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(W_V tokens (batch, H, n, d), the bias b_V (1, H, 1, d)): for values of a linear mix of tokens."""
        bias = self._split(tokens.new_zeros(1, 1, tokens.shape[-1]))[2]
        values = self._split(tokens)[2] - bias
        return self._heads(values, self.kv_heads, None), self._heads(bias, self.kv_heads, None)

    def output(self, z: Tensor, bias: bool = True) -> Tensor:
        """W_O [z_1 ... z_H] (+ b_O): (batch, H, q, d) -> (batch, q, e)."""
        out = self.o(z.transpose(1, 2).flatten(2))
        return out if bias or self.o.bias is None else out - self.o.bias


class TrainingFreeMemory(nn.Module):
    """The continuous memory of one layer read with the layer's own attention weights; no parameters.

    The attention module is kept out of this module's children (it belongs to the base model), so
    nothing is added to the model's parameters or saved twice.
    """

    absorbs_attention_input = True

    def __init__(
        self,
        config: LTMConfig,
        free: TrainingFreeConfig,
        attention: nn.Module,
        model_config: Any,
        name: str | None = None,
    ) -> None:
        """name: the model's class, for the error if ``attention`` has no projections to read with."""
        super().__init__()
        self.config, self.free = config, free
        self.basis = GaussianBasis(config.num_basis, config.basis_widths)
        self.normalizer = NORMALIZERS["softmax"](self.basis)
        projections = Projections(attention, model_config, name or type(attention).__name__)
        if free.combine == "softmax":
            projections.check_softmax_combine()
        self.__dict__["projections_of_layer"] = projections

    # absorbing is LongTermAttention's, without the gate (a weight): contraction, M samples, refit of B
    gate = None
    init_state = LongTermAttention.init_state
    update = LongTermAttention.update

    def forward(
        self, queries: None, new_vectors: Tensor, state: LTMState, *, return_record: bool = False
    ) -> LTMState | tuple[LTMState, LTMRecord]:
        """Absorb new_vectors (batch, L, e): the call form of LongTermAttention's absorb-only forward
        (with return_record, also the LTMRecord of the absorption)."""
        if not return_record:
            return self.update(state, new_vectors)
        state, done = self.update(state, new_vectors, return_record=True)
        return state, LTMRecord([done])

    def grid(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The M grid points t_g (G,) and ψ(t_g) (G, N), in like's dtype and device."""
        t = torch.linspace(0.0, 1.0, self.config.num_samples, device=like.device, dtype=like.dtype)
        return t, self.basis(t)

    def projections(self, state: LTMState, dtype: torch.dtype | None = None) -> MemoryKeysValues:
        """Keys and values of the memory's reconstructed tokens X̄(t_g) = Bᵀψ(t_g) through the layer."""
        layer = self.projections_of_layer
        dtype = dtype or (layer.fused if layer.fused is not None else layer.k).weight.dtype
        coeffs = state.coeffs  # B: (batch, N, e)
        tokens = (self.grid(coeffs)[1] @ coeffs).to(dtype)  # X̄(t_g): (batch, G, e)
        keys, values = layer.keys_values(tokens)
        basis_values, bias = layer.values_without_bias(coeffs.to(dtype))
        return MemoryKeysValues(keys, values, basis_values, bias)

    def read(
        self,
        queries: Tensor,
        state: LTMState,
        projections: MemoryKeysValues | None = None,
        *,
        block: BlockAttention,
        query_mask: Tensor | None = None,
        return_kl: bool = False,
        accumulate_mass: bool = False,
        return_record: bool = False,
    ) -> tuple[Tensor, LTMState, None] | tuple[Tensor, LTMState, None, ReadRecord]:
        """(what to add to the block attention's output a (batch, q, e), state with the sticky bin mass,
        None) for queries x (batch, q, e): α (m - a) (mix) or the softmax merge's change of a; 0 in
        rows with an empty memory. With return_record also the ReadRecord of the moments μ, σ² of
        the Gibbs density on the grid."""
        layer = self.projections_of_layer
        kv = projections if projections is not None else self.projections(state, queries.dtype)
        q = layer.queries(queries)  # (batch, H, q, d), not rotated: the memory has no positions
        with torch.autocast(device_type=queries.device.type, enabled=False):
            work = torch.promote_types(queries.dtype, torch.float32)
            t = self.grid(q.to(work))[0]  # (G,)
            scores = (
                q.to(work) @ kv.keys.to(work).transpose(-1, -2) * layer.scaling
            )  # s(t_g): (batch, H, q, G)
            p = torch.softmax(scores, dim=-1)  # the Gibbs density on the grid: (batch, H, q, G)
            mu = p @ t  # (batch, H, q)
            sigma2 = (p @ t.square() - mu.square()).clamp_min(self.config.min_sigma2)
            if self.free.density == "gibbs":
                context = p @ kv.values.to(work)  # z_h = Σ_g p(t_g) v(t_g): (batch, H, q, d)
            else:
                context = self.normalizer.context(mu, sigma2, kv.basis_values.to(work)) + kv.value_bias.to(
                    work
                )
            if self.free.combine == "softmax":
                # n tokens on M grid points: log((n / M) Σ_g exp(s_g)), n >= 1 (an empty memory is masked below)
                tokens = state.length.clamp_min(1).to(work).log()[:, None, None]
                log_mass = torch.logsumexp(scores, dim=-1) + tokens - math.log(scores.shape[-1])
                add = self._merge(queries, context, log_mass, block)
        has_memory = state.length > 0
        valid = has_memory[:, None] if query_mask is None else has_memory[:, None] & query_mask  # (batch, q)
        if self.free.combine == "mix":
            m = layer.output(context.to(queries.dtype))  # W_O z + b_O: (batch, q, e)
            add = self.free.alpha * (m.to(block.output.dtype) - block.output)
        add = add * valid[..., None].to(add.dtype)
        if self.config.sticky:
            weight = valid[:, None, :].to(mu.dtype)
            mass = bin_mass(self.normalizer.cdf, mu.detach(), sigma2.detach(), self.config.num_bins, weight)
            mass = mass.to(state.bin_mass.dtype)
            state = replace(state, bin_mass=state.bin_mass + mass if accumulate_mass else mass)
        if return_record:
            return add, state, None, ReadRecord(mu.detach(), sigma2.detach(), valid.expand(-1, q.shape[2]))
        return add, state, None

    def block_attention(self, x: Tensor, block: BlockAttention) -> tuple[Tensor, Tensor]:
        """The block's own attention for queries x (batch, q, e), recomputed from the same projections
        (queries rotated as the layer does, keys/values from its cache): (a_h (batch, H, q, d), the
        log-normaliser ℓ_a = log Σ_j exp(s_j) (batch, H, q)), in float32 or wider."""
        layer = self.projections_of_layer
        if block.keys is None or block.values is None or block.key_mask is None:
            raise ValueError("training_free combine='softmax' needs the block's keys, values and key mask")
        work = torch.promote_types(x.dtype, torch.float32)
        keys, values = layer.block_keys_values(block)  # (batch, H, S, d)
        q = layer.rotated(layer.queries(x), block.rotary).to(work)  # (batch, H, q, d) as the layer sees them
        s = q @ keys.to(work).transpose(-1, -2) * layer.scaling  # (batch, H, q, S)
        s = s.masked_fill(~block.key_mask[:, None], torch.finfo(work).min)
        return torch.softmax(s, dim=-1) @ values.to(work), torch.logsumexp(s, dim=-1)

    def _merge(self, x: Tensor, context: Tensor, log_mass: Tensor, block: BlockAttention) -> Tensor:
        """The change of the attention output a when the memory (context z_h (batch, H, q, d), log-mass
        ℓ_m (batch, H, q)) joins the block's keys under one softmax: W_O[(1 - λ)(z_h - a_h)] per head,
        1 - λ = sigmoid(ℓ_m - ℓ_a), with a_h and ℓ_a recomputed from the block's cached keys/values."""
        a, log_block = self.block_attention(x, block)  # a_h, ℓ_a
        memory_share = torch.sigmoid(log_mass.to(a.dtype) - log_block)[..., None]  # 1 - λ: (batch, H, q, 1)
        change = (memory_share * (context.to(a.dtype) - a)).to(x.dtype)
        return self.projections_of_layer.output(change, bias=False).to(block.output.dtype)  # (batch, q, e)

    def extra_repr(self) -> str:
        return (
            f"density={self.free.density}, alpha={self.free.alpha}, combine={self.free.combine}, "
            f"N={self.config.num_basis}"
        )


def check_no_weights(tensors: dict[str, Tensor], source: Any) -> None:
    """A training-free memory has no weights: loading some into it is an error."""
    if tensors:
        raise ValueError(
            f"training_free memory has no weights, but {source} holds {len(tensors)} memory weights "
            f"({sorted(tensors)[:3]}...): load them into a memory added without training_free"
        )


__all__ = [
    "COMBINES",
    "BlockAttention",
    "DENSITIES",
    "MemoryKeysValues",
    "TrainingFreeConfig",
    "TrainingFreeMemory",
    "check_no_weights",
]
