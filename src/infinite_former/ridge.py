"""The continuous signal X̄(t) = Bᵀψ(t): ridge fit and evaluation (paper §1).

L vectors X ∈ ℝ^{L×e} sit at positions t_1..t_L ∈ [0, 1]. With
F = [ψ(t_1) … ψ(t_L)] ∈ ℝ^{N×L}, multivariate ridge regression gives

    Bᵀ = Xᵀ Fᵀ (F Fᵀ + λI)⁻¹   i.e.   B = Gᵀ X,   G = Fᵀ (F Fᵀ + λI)⁻¹ ∈ ℝ^{L×N}.

G depends only on the positions, N and λ, so it is built once per layout (in
float64, by a Cholesky solve, never an explicit inverse) and cached; a fit is
then one matmul. With edge padding, n/2 zero-valued points on each side, on
[-0.5, 0) and (1, 1.5], pull the signal to 0 outside [0, 1]; they change
(F Fᵀ + λI) but, being zeros, only the columns for the real points are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .basis import gaussian_pdf, negligible, rbf_layout

_OPERATOR_CACHE: dict[tuple, Tensor] = {}
_OPERATOR_CACHE_MAX = 256


def midpoints(n: int, lo: float = 0.0, hi: float = 1.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """n bin midpoints lo + (j - ½)(hi - lo)/n, j = 1..n."""
    return lo + (torch.arange(n, dtype=dtype) + 0.5) * ((hi - lo) / n)


def contraction_positions(num_old: int, num_new: int, tau: float) -> Tensor:
    """Positions of the refit after a contraction (paper §3), float64 (M + L,).

    The M samples of the old signal go evenly on [0, τ], the L new vectors
    evenly on [τ, 1] (bin midpoints of each interval).
    """
    return torch.cat([midpoints(num_old, 0.0, tau), midpoints(num_new, tau, 1.0)])


def ridge_operator(
    positions: Tensor,
    num_basis: int,
    widths: Sequence[float],
    ridge_lambda: float,
    edge_padding: bool = False,
) -> Tensor:
    """G = Fᵀ (F Fᵀ + λI)⁻¹ for the given positions, float64 (L, N). Uncached."""
    if ridge_lambda <= 0:
        raise ValueError(f"ridge_lambda (λ) must be > 0, got {ridge_lambda!r}")
    positions = positions.to(torch.float64).cpu()
    mu, sigma = rbf_layout(num_basis, widths)
    all_pos = positions
    if edge_padding:
        n_pad = max(positions.numel() // 2, 1)
        all_pos = torch.cat([midpoints(n_pad, -0.5, 0.0), positions, midpoints(n_pad, 1.0, 1.5)])
    design = gaussian_pdf(all_pos[:, None], mu, sigma**2)  # Fᵀ: (L_all, N)
    gram = design.T @ design + ridge_lambda * torch.eye(num_basis, dtype=torch.float64)
    chol = torch.linalg.cholesky(gram)
    real = design[n_pad : n_pad + positions.numel()] if edge_padding else design
    # G = Fᵀ (F Fᵀ + λI)⁻¹  <=>  Gᵀ = (F Fᵀ + λI)⁻¹ F, a solve against F.
    return torch.cholesky_solve(real.T.contiguous(), chol).T.contiguous()


def cached_operator(
    kind: str,
    sizes: tuple[int, ...],
    num_basis: int,
    widths: Sequence[float],
    ridge_lambda: float,
    edge_padding: bool,
    tau: float,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """A ridge operator for a named layout, cached per (layout, device, dtype).

    kind "fresh": sizes = (L,), G for midpoints(L) on [0, 1]: (L, N).
    kind "contract_old" / "contract_new": sizes = (M, L), the rows of G for
    contraction_positions(M, L, τ) that belong to the M old samples (M, N) /
    the L new vectors (L, N).
    kind "contract_uniform": sizes = (M, L), G_oldᵀ ψ(s) for the uniform samples
    s_m = midpoints(M): (N, N), so that contracting B is B' = P B.
    Built in float64; entries below θ = ε·max|op|/K (ε of dtype, K the length of the sums the
    operator enters: L or M for a fit, N for P B) become exact zeros, so a product moves by at
    most ε·max|op|·max|other factor| and holds no subnormal numbers (``negligible``); then cast once.

    Under torch.compile the lookup is the opaque op ``infinite_former::ridge_operator``: the graph
    neither guards on the cache (no recompilation as it fills) nor traces the construction.
    """
    if torch.compiler.is_compiling():
        return torch.ops.infinite_former.ridge_operator(
            kind,
            list(sizes),
            num_basis,
            [float(w) for w in widths],
            ridge_lambda,
            edge_padding,
            tau,
            device,
            dtype,
        )
    sizes, widths = tuple(sizes), tuple(widths)
    key = (kind, sizes, num_basis, widths, ridge_lambda, edge_padding, tau, str(device), dtype)
    op = _OPERATOR_CACHE.get(key)
    if op is None:
        if kind == "fresh":
            op = ridge_operator(midpoints(sizes[0]), num_basis, widths, ridge_lambda, edge_padding)
        elif kind in ("contract_old", "contract_new", "contract_uniform"):
            num_old = sizes[0]
            g = ridge_operator(
                contraction_positions(num_old, sizes[1], tau), num_basis, widths, ridge_lambda, edge_padding
            )
            if kind == "contract_old":
                op = g[:num_old]
            elif kind == "contract_new":
                op = g[num_old:]
            else:
                mu, sigma = rbf_layout(num_basis, widths)
                psi = gaussian_pdf(midpoints(num_old)[:, None], mu, sigma**2)  # ψ(s): (M, N)
                op = g[:num_old].T @ psi
        else:
            raise ValueError(f"unknown operator kind {kind!r}")
        terms = op.shape[1] if kind == "contract_uniform" else op.shape[0]
        theta = negligible(dtype, op.abs().max().item(), terms)
        op = torch.where(op.abs() < theta, 0.0, op) if theta > 0 else op
        op = op.contiguous().to(device, dtype)
        if len(_OPERATOR_CACHE) >= _OPERATOR_CACHE_MAX:
            _OPERATOR_CACHE.pop(next(iter(_OPERATOR_CACHE)))
        _OPERATOR_CACHE[key] = op
    return op


@torch.library.custom_op("infinite_former::ridge_operator", mutates_args=())
def _ridge_operator_op(
    kind: str,
    sizes: list[int],
    num_basis: int,
    widths: list[float],
    ridge_lambda: float,
    edge_padding: bool,
    tau: float,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """The cached operator, as an op that compiled graphs call at run time. A copy: a compiled graph
    may reuse an op's output buffer for later results, which must not overwrite the cache."""
    op = cached_operator(kind, sizes, num_basis, widths, ridge_lambda, edge_padding, tau, device, dtype)
    return op.clone()  # (run outside any trace: cached_operator's eager path)


@_ridge_operator_op.register_fake
def _(kind, sizes, num_basis, widths, ridge_lambda, edge_padding, tau, device, dtype):
    rows = {
        "fresh": sizes[0],
        "contract_old": sizes[0],
        "contract_new": sizes[-1],
        "contract_uniform": num_basis,
    }
    if kind not in rows:
        raise ValueError(f"unknown operator kind {kind!r}")
    return torch.empty(rows[kind], num_basis, device=device, dtype=dtype)


def fit(x: Tensor, operator: Tensor) -> Tensor:
    """B = Gᵀ X: (batch, L, e) values and (L, N) operator -> (batch, N, e)."""
    return torch.matmul(operator.T, x)


def reconstruct(coeffs: Tensor, psi: Tensor) -> Tensor:
    """X̄(t) = Bᵀψ(t): coeffs (batch, N, e), psi (T, N) or (batch, T, N) -> (batch, T, e)."""
    return torch.matmul(psi, coeffs)
