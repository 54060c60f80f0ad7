"""Unbounded memory: the explicit state and its update (paper §3).

When L new vectors arrive, the old signal X̄_old is contracted to [0, τ]: it
is evaluated at M sample positions s_1..s_M ∈ [0, 1], the samples are placed
evenly on [0, τ], the new vectors evenly on [τ, 1], and B is refit on the
M + L points. The old B is detached, so no gradient reaches past segments.

Sample positions are either uniform (bin midpoints of [0, 1]) or **sticky**:
the previous step's attention densities, integrated over D equal bins, form
a piecewise-uniform density on [0, 1] and the samples are its stratified
quantiles, so regions that were attended get more of the M samples and so
more room in the new signal. Everything is batched: no loop over rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from . import ridge
from .basis import GaussianBasis
from .utils import autocast_off, check_int


@dataclass
class LTMState:
    """The long-term memory of one layer, for a batch of streams.

    coeffs:   B, (batch, N, e), the signal X̄(t) = Bᵀψ(t); kept in at least float32.
    length:   (batch,) int64, tokens absorbed so far (0 = empty memory).
    bin_mass: (batch, D), last step's attention mass per bin of [0, 1],
              for sticky sampling; all zeros where there is none yet.

    Its size never depends on how many tokens were absorbed.
    """

    coeffs: Tensor
    length: Tensor
    bin_mass: Tensor

    @classmethod
    def empty(
        cls,
        batch_size: int,
        num_basis: int,
        dim: int,
        num_bins: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> LTMState:
        dtype = torch.promote_types(dtype, torch.float32)
        return cls(
            coeffs=torch.zeros(batch_size, num_basis, dim, device=device, dtype=dtype),
            length=torch.zeros(batch_size, device=device, dtype=torch.long),
            bin_mass=torch.zeros(batch_size, num_bins, device=device, dtype=dtype),
        )

    @property
    def batch_size(self) -> int:
        return self.coeffs.shape[0]

    def detach(self) -> LTMState:
        return replace(self, coeffs=self.coeffs.detach(), bin_mass=self.bin_mass.detach())

    def to(self, *args, **kwargs) -> LTMState:
        """Move like Tensor.to; length stays int64."""
        moved = {f.name: getattr(self, f.name).to(*args, **kwargs) for f in fields(self)}
        moved["length"] = self.length.to(moved["coeffs"].device, torch.long)
        return LTMState(**moved)

    def reset(self, rows: Tensor) -> LTMState:
        """Empty the memory of chosen rows (bool mask (batch,) or indices)."""
        if rows.dtype != torch.bool:
            mask = torch.zeros(self.batch_size, dtype=torch.bool, device=self.coeffs.device)
            mask[rows.to(self.coeffs.device)] = True
            rows = mask
        if rows.shape != (self.batch_size,):
            raise ValueError(
                f"rows must be a bool mask of shape ({self.batch_size},), got {tuple(rows.shape)}"
            )
        rows = rows.to(self.coeffs.device)
        keep = ~rows
        return LTMState(
            coeffs=self.coeffs * keep[:, None, None],
            length=self.length * keep,
            bin_mass=self.bin_mass * keep[:, None],
        )

    def select(self, rows: Tensor) -> LTMState:
        """The memory of a subset of rows (e.g. for beam search / lane reordering)."""
        return self.map(lambda t: t[rows])

    def map(self, fn: Callable[[Tensor], Tensor]) -> LTMState:
        """Apply fn to every field (all are batch-first), e.g. detach, a row index, a device move."""
        return LTMState(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def merge(self, other: LTMState, rows: Tensor) -> LTMState:
        """Row i from ``other`` where rows[i] (bool (batch,)), else from self."""

        def pick(a: Tensor, b: Tensor) -> Tensor:
            return torch.where(rows.view(-1, *([1] * (a.dim() - 1))), b, a)

        return LTMState(**{f.name: pick(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})

    def state_dict(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> LTMState:
        missing = {f.name for f in fields(cls)} - set(state)
        if missing:
            raise ValueError(f"memory state is missing {sorted(missing)}")
        return cls(**{f.name: state[f.name] for f in fields(cls)})

    def save(self, path: str | os.PathLike) -> None:
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: torch.device | str | None = None) -> LTMState:
        return cls.from_state_dict(torch.load(path, map_location=map_location, weights_only=True))


MemoryState = LTMState  # the 0.1 name; kept for one release (README: "Moved in 0.2")


# ------------------------------------------------------------------ sample positions


def uniform_positions(num_samples: int, device=None, dtype: torch.dtype = torch.float32) -> Tensor:
    """s_m = (m - ½)/M, the "linearly spaced" sampling: (M,)."""
    return ridge.midpoints(num_samples).to(device, dtype)


def sticky_positions(bin_mass: Tensor, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """M sticky sample positions per row, sorted: (batch, D) mass -> (batch, M).

    The D bins' masses define a piecewise-uniform density on [0, 1]; positions
    are its inverse CDF at stratified uniforms (m + U_m)/M, so a bin with a
    share p of the mass receives about p·M samples, spread inside it. Rows
    with no mass fall back to uniform bins.
    """
    if bin_mass.dim() != 2:
        raise ValueError(f"bin_mass must be a (batch, D) tensor, got shape {tuple(bin_mass.shape)}")
    check_int("num_samples", num_samples, 1, symbol="M")
    batch, num_bins = bin_mass.shape
    mass = bin_mass.clamp_min(0)
    total = mass.sum(-1, keepdim=True)
    probs = torch.where(total > 0, mass / total.clamp_min(torch.finfo(mass.dtype).tiny), 1.0 / num_bins)
    cdf = probs.cumsum(-1)
    cdf = torch.cat([cdf[:, :-1], torch.ones_like(cdf[:, -1:])], dim=-1)  # exact 1 at the end
    # drawn in float32 whatever the working dtype, so a seed gives the same positions in every dtype
    jitter = torch.rand(batch, num_samples, generator=generator, device=mass.device).to(mass.dtype)
    u = (torch.arange(num_samples, device=mass.device, dtype=mass.dtype) + jitter) / num_samples
    idx = torch.searchsorted(cdf, u, right=True).clamp_max(num_bins - 1)
    upper = cdf.gather(-1, idx)
    p = probs.gather(-1, idx)
    frac = ((u - (upper - p)) / p.clamp_min(torch.finfo(mass.dtype).tiny)).clamp(0, 1)
    return (idx.to(mass.dtype) + frac) / num_bins


def bin_mass(cdf, mu: Tensor, sigma2: Tensor, num_bins: int, weight: Tensor | None = None) -> Tensor:
    """Σ_heads Σ_queries ∫_{bin_j} p(t) dt: mu, sigma2 (batch, H, q) -> (batch, D).

    cdf is the normalizer's CDF (t, μ, σ²) -> P(T <= t). The CDFs at the D + 1
    bin edges are summed over heads and queries first, then differenced.
    weight: optional, broadcastable to (batch, H, q), e.g. 0 for padding queries.
    """
    edges = torch.linspace(0, 1, num_bins + 1, device=mu.device, dtype=mu.dtype)
    c = cdf(edges, mu.unsqueeze(-1), sigma2.unsqueeze(-1))  # (batch, H, q, D + 1)
    if weight is not None:
        c = c * weight.unsqueeze(-1)
    c = c.sum(dim=(1, 2))  # (batch, D + 1)
    return (c[:, 1:] - c[:, :-1]).clamp_min(0)


# --------------------------------------------------------------------------- update


def update_memory(
    state: LTMState,
    new_vectors: Tensor,
    basis: GaussianBasis,
    *,
    num_samples: int,
    tau: float,
    ridge_lambda: float,
    edge_padding: bool = False,
    sticky: bool = False,
    generator: torch.Generator | None = None,
) -> LTMState:
    """Absorb L new vectors (batch, L, e) into the memory; returns the new state.

    Non-empty rows: contract the old signal to [0, τ] with M samples (uniform or
    sticky), put the new vectors on [τ, 1], refit. Empty rows: fit the new
    vectors alone on [0, 1]. The result is chosen per row with torch.where, so
    the update is branch-free (and compilable); on CPU in eager mode the branch
    that no row needs is skipped (same result, less work). The update is a float32
    island: it runs in B's dtype (>= float32) with autocast off.
    """
    _check_update_args(state, new_vectors, basis, num_samples, tau)
    with autocast_off(state.coeffs.device.type):
        return _update(
            state, new_vectors, basis, num_samples, tau, ridge_lambda, edge_padding, sticky, generator
        )


def _update(state, new_vectors, basis, num_samples, tau, ridge_lambda, edge_padding, sticky, generator):
    """update_memory's arithmetic (autocast off)."""
    coeffs = state.coeffs.detach()
    work = coeffs.dtype
    x = new_vectors.to(work)
    num_new = x.shape[1]
    if num_new == 0:
        return state
    common = dict(
        num_basis=basis.num_basis,
        widths=basis.widths,
        ridge_lambda=ridge_lambda,
        edge_padding=edge_padding,
        tau=tau,
        device=coeffs.device,
        dtype=work,
    )
    has_memory = state.length > 0  # (batch,)
    need_contract = need_fresh = True
    if coeffs.device.type == "cpu" and not torch.compiler.is_compiling():
        with_memory = int(has_memory.sum())  # one host read
        need_contract, need_fresh = with_memory > 0, with_memory < has_memory.numel()

    contracted = fresh = None
    if need_contract:
        g_new = ridge.cached_operator("contract_new", (num_samples, num_new), **common)  # (L, N)
        if sticky:
            g_old = ridge.cached_operator("contract_old", (num_samples, num_new), **common)  # (M, N)
            positions = sticky_positions(
                state.bin_mass.detach().to(work), num_samples, generator
            )  # (batch, M)
            old_samples = ridge.reconstruct(coeffs, basis(positions))  # X̄_old(s_m): (batch, M, e)
            contracted = ridge.fit(old_samples, g_old)
        else:
            # Uniform samples: fitting X̄_old(s) is linear in B, B' = (G_oldᵀ ψ(s)) B, with the N × N
            # product cached.
            p_old = ridge.cached_operator("contract_uniform", (num_samples, num_new), **common)
            contracted = torch.matmul(p_old, coeffs)
        contracted = contracted + ridge.fit(x, g_new)
    if need_fresh:
        fresh = ridge.fit(x, ridge.cached_operator("fresh", (num_new,), **common))
    if contracted is None:
        new_coeffs = fresh
    elif fresh is None:
        new_coeffs = contracted
    else:
        new_coeffs = torch.where(has_memory[:, None, None], contracted, fresh)
    return LTMState(coeffs=new_coeffs, length=state.length + num_new, bin_mass=state.bin_mass)


def _check_update_args(state: LTMState, new_vectors: Tensor, basis: GaussianBasis, num_samples, tau) -> None:
    check_int("num_samples", num_samples, 1, symbol="M")
    if not (0.0 < tau < 1.0):
        raise ValueError(f"tau (τ) must be in (0, 1), got {tau!r}")
    batch, n, e = state.coeffs.shape
    if n != basis.num_basis:
        raise ValueError(f"state.coeffs has N = {n} basis coefficients but the basis has {basis.num_basis}")
    if not isinstance(new_vectors, Tensor) or new_vectors.dim() != 3 or new_vectors.shape[-1] != e:
        shape = tuple(new_vectors.shape) if isinstance(new_vectors, Tensor) else type(new_vectors).__name__
        raise ValueError(f"new_vectors must be a (batch, L, {e}) tensor, got {shape}")
    if new_vectors.shape[0] != batch:
        raise ValueError(f"new_vectors has batch size {new_vectors.shape[0]} but the state has {batch}")
