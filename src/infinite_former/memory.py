"""Unbounded memory: the explicit state and its update (paper §3).

When L new vectors arrive, the old signal X̄_old is contracted to [0, τ]: it
is evaluated at M sample positions s_1..s_M ∈ [0, 1], the samples are placed
evenly on [0, τ], the new vectors evenly on [τ, 1], and B is refit on the
M + L points. The old B is detached, so no gradient reaches past segments.
The contraction schedule chooses τ at each update (``contraction_tau``): the
paper's fixed τ, or a τ_k that follows the count of absorbed tokens.

Sample positions are either uniform (bin midpoints of [0, 1]) or **sticky**:
the previous step's attention densities, integrated over D equal bins, form
a piecewise-uniform density on [0, 1] and the samples are its stratified
quantiles, so regions that were attended get more of the M samples and so
more room in the new signal. Everything is batched: no loop over rows.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from . import ridge
from .basis import GaussianBasis
from .provenance import check_finite, load_state_file
from .utils import autocast_off, check_int, deprecated_aliases


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
        """Inverse of state_dict; ValueError unless it holds coeffs (batch, N, e), length (batch,)
        and bin_mass (batch, D) tensors."""
        if not isinstance(state, dict):
            raise ValueError(f"memory state must be a dict of tensors, got {type(state).__name__}")
        missing = {f.name for f in fields(cls)} - set(state)
        if missing:
            raise ValueError(f"memory state is missing {sorted(missing)}")
        dims = {"coeffs": 3, "length": 1, "bin_mass": 2}
        for name, dim in dims.items():
            t = state[name]
            if not isinstance(t, Tensor) or t.dim() != dim or t.shape[0] != state["coeffs"].shape[0]:
                raise ValueError(
                    f"memory state {name} must be a tensor with {dim} dims and the batch first, got "
                    f"{tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}"
                )
        check_finite(state, "memory state")
        return cls(**{f.name: state[f.name] for f in fields(cls)})

    def save(self, path: str | os.PathLike) -> None:
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: torch.device | str | None = None) -> LTMState:
        """A state saved by ``save``; an unreadable or malformed file is one ValueError naming it."""
        return load_state_file(path, cls.from_state_dict, map_location)


__getattr__ = deprecated_aliases(
    __name__, {"MemoryState": (LTMState, "infinite_former.memory.LTMState")}
)  # the 0.1 name


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


# ------------------------------------------------------------------ contraction schedule

SCHEDULES = ("fixed", "uniform_time", "power")


def contraction_tau(
    length: Tensor, num_new: int, schedule: str = "fixed", tau: float = 0.5, power: float = 1.0
) -> Tensor:
    """τ_k of the update that absorbs L = num_new tokens into memories holding ``length`` (batch,).

    Returns (batch,) float64. Write n for the tokens absorbed after the update; a token is "born at
    j" if j tokens were absorbed before it (0 <= j < n). Where a token sits in [0, 1] after that:

    - ``fixed`` (the paper): τ_k = τ. The block absorbed k updates ago (k = 0 the newest) occupies
      [τ^{k+1}, τ^k], its tokens evenly spread inside; the first block occupies [0, τ^{k}]. A block's
      share shrinks by τ per update, so content older than about log(N)/log(1/τ) blocks falls
      below the resolution of N basis functions.
    - ``uniform_time``: τ_k = n_old / (n_old + L). A token born at j sits at (j + ½)/n exactly:
      every absorbed token keeps the equal share 1/n of [0, 1], whatever the block sizes.
    - ``power`` (exponent p = ``power`` > 0): τ_k = (n_old / (n_old + L))^p. The products telescope:
      a block of tokens born at j..j'-1 occupies [(j/n)^p, (j'/n)^p], its tokens evenly spread
      inside. p = 1 is ``uniform_time``; p > 1 leaves the newest block about p·L/n of [0, 1] and
      squeezes the oldest (the share of the oldest fraction f of tokens is f^p).

    Rows with an empty memory (length 0) get the τ of the longest row (their update is a fresh fit
    that ignores τ).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if schedule == "power" and not (isinstance(power, (int, float)) and 0 < power < math.inf):
        raise ValueError(
            f"power (the exponent p of the 'power' schedule) must be > 0 and finite, got {power!r}"
        )
    length = length.detach().to(torch.float64)
    if schedule == "fixed":
        return torch.full_like(length, tau)
    old = torch.where(length > 0, length, length.max())
    frac = old / (old + num_new)  # (batch,)
    return frac if schedule == "uniform_time" else frac**power


def _layouts(
    state: LTMState, num_new: int, schedule: str, tau: float, power: float
) -> tuple[list[float], Tensor | None]:
    """The distinct τ of this update (python floats) and each row's index among them (None if one)."""
    if schedule == "fixed":
        return [tau], None
    taus = contraction_tau(state.length, num_new, schedule, tau, power)  # (batch,)
    values, which = torch.unique(taus, return_inverse=True)
    return [float(t) for t in values.tolist()], (which if len(values) > 1 else None)


# --------------------------------------------------------------------------- update


@dataclass
class UpdateRecord:
    """What one ``update_memory`` call did (``return_record=True``): where each vector went in [0, 1].

    Row b's memory held first[b] tokens, and the update absorbed its tokens first[b] .. first[b] + L - 1.
    Rows with contracted[b] (non-empty memory): the old signal was sampled at samples[b] (s_1..s_M,
    sorted: the bin midpoints, or sticky sampling's draws), sample m moved to τ_b(m + ½)/M, and new
    vector j to τ_b + (1 - τ_b)(j + ½)/L (τ_b = tau[b]). Other rows (empty memory): a fresh fit on
    [0, 1], vector j at (j + ½)/L. These are the positions the fit used, so the map from t to the
    token whose content sits there follows any contraction (introspection.AgeMap.follow).

    first: (batch,) int64; tau: (batch,) float64; samples: (batch, M), the working dtype (NaN in
    rows that were not contracted); contracted: (batch,) bool; vectors: (batch, L, e) the vectors
    fit (after the caller's gate), detached; sticky: how the samples were chosen; absorbed:
    (batch,) bool, the rows whose state took this update (all, unless a caller kept some rows' old
    state: ``only``).
    """

    first: Tensor
    tau: Tensor
    samples: Tensor
    contracted: Tensor
    vectors: Tensor
    sticky: bool
    absorbed: Tensor

    @property
    def count(self) -> int:
        """L, the vectors absorbed per row."""
        return self.vectors.shape[1]

    def only(self, rows: Tensor) -> UpdateRecord:
        """The record of a caller that kept the update only in ``rows`` ((batch,) bool)."""
        return replace(self, absorbed=self.absorbed & rows)

    def new_positions(self) -> Tensor:
        """Where the fit put each new vector: (batch, L) float64 points of [0, 1]."""
        u = ridge.midpoints(self.count).to(self.tau.device)  # (L,) (j + ½)/L
        tau = torch.where(self.contracted, self.tau, 0.0)[:, None]  # a fresh fit spans [0, 1]
        return tau + (1.0 - tau) * u


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
    schedule: str = "fixed",
    power: float = 1.0,
    return_record: bool = False,
) -> LTMState | tuple[LTMState, UpdateRecord]:
    """Absorb L new vectors (batch, L, e) into the memory; returns the new state, and with
    return_record=True also the :class:`UpdateRecord` of what it did (nothing more is computed).

    Non-empty rows: contract the old signal to [0, τ_k] with M samples (uniform or
    sticky), put the new vectors on [τ_k, 1], refit; τ_k = ``contraction_tau(state.length,
    L, schedule, tau, power)`` (τ_k = τ for the paper's ``fixed`` schedule). Empty rows: fit
    the new vectors alone on [0, 1]. The result is chosen per row with torch.where, so
    the update is branch-free (and compilable for ``fixed``); on CPU in eager mode the branch
    that no row needs is skipped (same result, less work). Rows whose τ_k differ (memories of
    different lengths) use their own cached operators, gathered per row. The update is a float32
    island: it runs in B's dtype (>= float32) with autocast off.
    """
    _check_update_args(state, new_vectors, basis, num_samples, tau)
    with autocast_off(state.coeffs.device.type):  # a float32 island under bf16 autocast
        coeffs = state.coeffs.detach()
        work = coeffs.dtype
        x = new_vectors.to(work)
        num_new = x.shape[1]
        if num_new == 0:
            if not return_record:
                return state
            nothing = torch.zeros_like(state.length, dtype=torch.bool)
            return state, _record(state, x, None, num_samples, tau, nothing, sticky, absorbed=False)
        common = dict(
            num_basis=basis.num_basis,
            widths=basis.widths,
            ridge_lambda=ridge_lambda,
            edge_padding=edge_padding,
            device=coeffs.device,
            dtype=work,
        )
        has_memory = state.length > 0  # (batch,)
        positions = None  # (batch, M): the sample positions s_m, where drawn
        need_contract = need_fresh = True
        if coeffs.device.type == "cpu" and not torch.compiler.is_compiling():
            with_memory = int(has_memory.sum())  # one host read
            need_contract, need_fresh = with_memory > 0, with_memory < has_memory.numel()

        contracted = fresh = None
        if need_contract:
            taus, which = _layouts(state, num_new, schedule, tau, power)

            def operator(kind: str) -> Tensor:  # (rows, cols), or (batch, rows, cols) when rows' τ differ
                ops = [ridge.cached_operator(kind, (num_samples, num_new), tau=t, **common) for t in taus]
                return ops[0] if which is None else torch.stack(ops)[which]

            g_new = operator("contract_new")  # (L, N)
            if sticky:
                g_old = operator("contract_old")  # (M, N)
                positions = sticky_positions(
                    state.bin_mass.detach().to(work), num_samples, generator
                )  # (batch, M)
                old_samples = ridge.reconstruct(coeffs, basis(positions))  # X̄_old(s_m): (batch, M, e)
                contracted = torch.matmul(g_old.mT, old_samples)  # B = Gᵀ X
            else:
                # Uniform samples: fitting X̄_old(s) is linear in B, B' = (G_oldᵀ ψ(s)) B, with the N × N
                # product cached.
                contracted = torch.matmul(operator("contract_uniform"), coeffs)
            contracted = contracted + torch.matmul(g_new.mT, x)
        if need_fresh:
            fresh = ridge.fit(x, ridge.cached_operator("fresh", (num_new,), tau=tau, **common))
        if contracted is None:
            new_coeffs = fresh
        elif fresh is None:
            new_coeffs = contracted
        else:
            new_coeffs = torch.where(has_memory[:, None, None], contracted, fresh)
        new = LTMState(coeffs=new_coeffs, length=state.length + num_new, bin_mass=state.bin_mass)
        if not return_record:
            return new
        if positions is None and not sticky:
            positions = uniform_positions(num_samples, coeffs.device, work).expand(coeffs.shape[0], -1)
        taus = contraction_tau(state.length, num_new, schedule, tau, power)  # (batch,) τ_k per row
        return new, _record(state, x, positions, num_samples, taus, has_memory, sticky)


def _record(
    state: LTMState,
    x: Tensor,
    positions: Tensor | None,
    num_samples: int,
    tau: float | Tensor,
    contracted: Tensor,
    sticky: bool,
    absorbed: bool = True,
) -> UpdateRecord:
    """The UpdateRecord of an update of ``state`` with x (batch, L, e); positions: the (batch, M)
    sample positions, None where no row was contracted; tau: the τ the contraction used, one for
    all rows or (batch,) one per row."""
    batch = x.shape[0]
    if positions is None:
        positions = x.new_full((batch, num_samples), torch.nan)
    return UpdateRecord(
        first=state.length.clone(),
        tau=torch.as_tensor(tau, dtype=torch.float64, device=x.device).expand(batch).clone(),
        samples=torch.where(contracted[:, None], positions.detach(), torch.nan),
        contracted=contracted,
        vectors=x.detach(),
        sticky=sticky,
        absorbed=torch.full((batch,), absorbed, dtype=torch.bool, device=x.device),
    )


def check_tau(tau: float) -> None:
    """Raise ValueError unless τ (the old memory's share of [0, 1]) is in (0, 1)."""
    if not (0.0 < tau < 1.0):
        raise ValueError(f"tau (τ) must be in (0, 1), got {tau!r}")


def _check_update_args(state: LTMState, new_vectors: Tensor, basis: GaussianBasis, num_samples, tau) -> None:
    check_int("num_samples", num_samples, 1, symbol="M")
    check_tau(tau)
    batch, n, e = state.coeffs.shape
    if n != basis.num_basis:
        raise ValueError(f"state.coeffs has N = {n} basis coefficients but the basis has {basis.num_basis}")
    if not isinstance(new_vectors, Tensor) or new_vectors.dim() != 3 or new_vectors.shape[-1] != e:
        shape = tuple(new_vectors.shape) if isinstance(new_vectors, Tensor) else type(new_vectors).__name__
        raise ValueError(f"new_vectors must be a (batch, L, {e}) tensor, got {shape}")
    if new_vectors.shape[0] != batch:
        raise ValueError(f"new_vectors has batch size {new_vectors.shape[0]} but the state has {batch}")
