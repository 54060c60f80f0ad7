"""Memory introspection: what the ∞-former's long-term memory holds, and where its queries look.

    report = inspect_document(model, token_ids, seg_len=128)   # an InfiniteFormerLM (infinite*)
    paths = write_report(report, "runs/lm/inspect")            # PNGs + inspect.json

    infinite-former lm inspect --run runs/lm_sticky --text book.txt [--out DIR]   # experiments/introspect.py

A Hugging Face causal LM with memory (``hf.add_memory``, GPT-2 + memory, ``lm finetune``'s model)
gets the same report from ``infinite_former.hf.introspection.inspect_hf_document(model, token_ids)``
(``lm inspect --hf FOLDER``); it reads in the model's blocks and uses this module's pieces.

The memory is a signal X̄(t) = Bᵀψ(t) on t ∈ [0, 1] (PAPER §1). Each absorption of L new vectors
contracts the old signal to [0, τ] (its M samples s_1..s_M go evenly on [0, τ]) and puts the new
vectors evenly on [τ, 1] (PAPER §3). So the content at a point t is some token read earlier, and
the map from t to that token changes at every absorption. :class:`AgeMap` tracks it on a grid of
G points of [0, 1]: pos(t) is the token coordinate (token j spans [j, j + 1)) of the content the
update placed at t. The ridge fit blurs content over about one RBF width, so pos(t) says where
the content at t came from, not that nothing else leaks in.

Three questions, one figure each:

1. **Where do the queries look, by age?** Each query's density 𝒩(μ, σ²) (or the sparsemax
   parabola) is integrated over the G cells of [0, 1] and each cell's mass is put at the age
   (query position − pos(t), "tokens ago") of its content. Summed over heads, queries and
   segments, per layer, in log-spaced age bins (two per octave). The mass outside [0, 1] (the
   density's tails) is reported separately.
2. **Where does sticky sampling take its M samples?** At every absorption, the histogram of the
   sample positions s_m over the D bins of [0, 1] (the previous step's attention mass decides
   them, PAPER §3).
3. **How much of a stored vector can be recovered, by age?** For a subset of tokens, the vector
   that entered the memory (LN₁ of the layer input, after the gate; for the Hugging Face models
   the layer input, after the gate) is kept; at the end of the document its relative error
   ‖X̄(t*) − x‖ / ‖x‖ is measured at t* = pos⁻¹(token), against the token's age. 1 is the error
   of remembering nothing (X̄ = 0).

The reading is the model's own forward with ``return_record=True``: the model says what its
memory did (attention.LTMRecord per layer: each absorption's UpdateRecord, with the sample
positions and the τ it used and the vectors it fit, and each read's μ, σ²), and this module only
reads that record; nothing is recomputed. Recording changes no number of the forward. The whole
reading runs inside a fork of the global RNG seeded with ``InspectConfig.seed`` (sticky sampling
draws from it), so the caller's random state is untouched and a seed gives the same report.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .attention import LongTermAttention, ReadRecord
from .memory import LTMState, UpdateRecord
from .plots import AgeCurve, plot_by_age, plot_sample_histograms
from .ridge import midpoints, reconstruct
from .utils import check_int, machine_info, seeded_rng, write_json

RECONSTRUCTION_AGES = (1_000, 10_000, 100_000)


# ----------------------------------------------------------------------------------- the age map


@dataclass
class AgeMap:
    """pos(t) on a grid of G cell midpoints of [0, 1]: the token coordinate of the content at t.

    grid: (G,) float64 cell midpoints; pos: (G,) float64 token coordinates (token j spans
    [j, j + 1)), NaN while the memory is empty. Non-decreasing in t (older content sits left).
    """

    grid: np.ndarray
    pos: np.ndarray

    @classmethod
    def empty(cls, grid_points: int) -> AgeMap:
        check_int("grid_points", grid_points, 2)
        grid = midpoints(grid_points).numpy()
        return cls(grid=grid, pos=np.full(grid_points, np.nan))

    @property
    def is_empty(self) -> bool:
        return bool(np.isnan(self.pos).all())

    def absorb(self, start: int, count: int, tau: float, samples: np.ndarray | None) -> AgeMap:
        """The map after absorbing tokens [start, start + count).

        samples: the M sorted sample positions s_m of the old signal (None or an empty memory:
        a fresh fit of the new tokens on [0, 1]). Sample m sits at τ(m + ½)/M afterwards, so the
        content at t < τ is the old content at s(t/τ), s interpolated between the samples.
        """
        check_int("count", count, 1)
        t = self.grid
        if self.is_empty or samples is None:
            return replace(self, pos=start + t * count)
        m = len(samples)
        u = (np.arange(m) + 0.5) / m
        s = np.interp(t / tau, u, samples)  # the old position moved to t (for t < τ)
        old = np.interp(s, t, self.pos)
        new = start + (t - tau) / (1.0 - tau) * count
        return replace(self, pos=np.where(t < tau, old, new))

    def follow(self, update: UpdateRecord, row: int = 0) -> AgeMap:
        """The map after the absorption ``update`` recorded (row ``row``), from the τ and the sample
        positions the update used, so it follows whatever contraction the update made."""
        contracted = bool(update.contracted[row])
        samples = update.samples[row].double().cpu().numpy() if contracted else None
        tau = float(update.tau[row])
        return self.absorb(int(update.first[row]), update.count, tau, samples)

    def locate(self, coords: np.ndarray) -> np.ndarray:
        """t where the content of token coordinates ``coords`` sits now (inverse of pos)."""
        return np.interp(coords, self.pos, self.grid)


def age_bin_edges(max_age: float, per_octave: int = 2) -> np.ndarray:
    """Log-spaced age bin edges 1, 2^(1/k), ..., covering max_age (k = per_octave)."""
    n = max(1, math.ceil(per_octave * math.log2(max(max_age, 2.0))))
    return 2.0 ** (np.arange(n + 1) / per_octave)


# ------------------------------------------------------------------------------------- the report


@dataclass
class LayerReport:
    """What one layer's memory did over a document (see the module doc for each field's meaning)."""

    attention_mass: np.ndarray  # (H, bins): density mass per age bin, summed over queries
    outside_mass: np.ndarray  # (H,): mass outside [0, 1]
    queries: int = 0  # queries that read a non-empty memory
    sticky_histograms: list[np.ndarray] = field(default_factory=list)  # per absorption (D,) counts
    absorptions: int = 0
    tracked_positions: list[int] = field(default_factory=list)
    tracked_vectors: list[Tensor] = field(default_factory=list)  # (e,) vectors that entered the memory
    recon_age: np.ndarray | None = None  # (n,) ages of the tracked tokens at the end
    recon_error: np.ndarray | None = None  # (n,) their relative reconstruction errors
    recon_baseline: float | None = None  # mean relative error of the mean tracked vector (no memory of order)


@dataclass
class MemoryReport:
    """The result of :func:`inspect_document`; ``to_dict()`` is the JSON written by write_report."""

    tokens: int
    seg_len: int
    memory_type: str
    num_basis: int
    num_samples: int
    tau: float
    num_bins: int
    mem_len: int
    age_edges: np.ndarray
    layers: list[LayerReport]
    meta: dict[str, Any] = field(default_factory=dict)
    layer_ids: list[int] | None = None  # the model's index of each memory layer (None: 0, 1, ...)

    def layer_id(self, layer: int) -> int:
        """The model's index of the ``layer``-th memory layer (the one named in the JSON and figures)."""
        return layer if self.layer_ids is None else self.layer_ids[layer]

    def attention_share(self, layer: int) -> np.ndarray:
        """Share of the queries' density per age bin (mean over heads and queries): (bins,)."""
        r = self.layers[layer]
        heads = r.attention_mass.shape[0]
        return r.attention_mass.sum(0) / max(r.queries * heads, 1)

    def median_attention_age(self, layer: int) -> float | None:
        """The age below which half of the density inside [0, 1] falls (geometric bin interpolation)."""
        share = self.attention_share(layer)
        if share.sum() <= 0:
            return None
        cdf = np.cumsum(share) / share.sum()
        k = int(np.searchsorted(cdf, 0.5))
        lo, hi = self.age_edges[k], self.age_edges[k + 1]
        before = cdf[k - 1] if k else 0.0
        frac = (0.5 - before) / max(cdf[k] - before, 1e-12)
        return float(lo * (hi / lo) ** frac)

    def reconstruction_by_age(self, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bin centres, mean relative error, count) of the tracked tokens per age bin."""
        r = self.layers[layer]
        centres = np.sqrt(self.age_edges[:-1] * self.age_edges[1:])
        if r.recon_age is None or not len(r.recon_age):
            return centres, np.full(len(centres), np.nan), np.zeros(len(centres), dtype=int)
        idx = np.clip(np.searchsorted(self.age_edges, r.recon_age, side="right") - 1, 0, len(centres) - 1)
        count = np.bincount(idx, minlength=len(centres))
        total = np.bincount(idx, weights=r.recon_error, minlength=len(centres))
        with np.errstate(invalid="ignore", divide="ignore"):
            return centres, np.where(count > 0, total / np.maximum(count, 1), np.nan), count

    def error_at_age(self, layer: int, age: float) -> tuple[float | None, int]:
        """Mean relative error of tracked tokens aged within a factor √2 of ``age``, and their count."""
        r = self.layers[layer]
        if r.recon_age is None:
            return None, 0
        sel = (r.recon_age >= age / math.sqrt(2)) & (r.recon_age <= age * math.sqrt(2))
        return (float(r.recon_error[sel].mean()) if sel.any() else None), int(sel.sum())

    def to_dict(self) -> dict[str, Any]:
        layers = []
        for i, r in enumerate(self.layers):
            centres, err, count = self.reconstruction_by_age(i)
            heads = r.attention_mass.shape[0]
            at = {}
            for age in RECONSTRUCTION_AGES:
                mean, n = self.error_at_age(i, age)
                at[str(age)] = {"relative_error": mean, "tokens": n}
            layers.append(
                {
                    "layer": self.layer_id(i),
                    "queries": r.queries,
                    "attention_share_by_age": self.attention_share(i).tolist(),
                    "attention_share_by_age_per_head": (
                        r.attention_mass / max(r.queries, 1)
                    ).tolist(),  # (H, bins), each head's queries sum to 1 with the outside mass
                    "attention_share_outside_0_1": float(r.outside_mass.sum() / max(r.queries * heads, 1)),
                    "median_attention_age": self.median_attention_age(i),
                    "absorptions": r.absorptions,
                    **_sticky_summary(r.sticky_histograms, self.num_samples),
                    "reconstruction": {
                        "age_bin_centres": centres.tolist(),
                        "mean_relative_error": [None if math.isnan(e) else float(e) for e in err],
                        "tokens": count.tolist(),
                        "at_age": at,
                        "baseline_mean_vector": r.recon_baseline,
                    },
                }
            )
        return {
            "tokens": self.tokens,
            "seg_len": self.seg_len,
            "memory_type": self.memory_type,
            "ltm": {
                "num_basis": self.num_basis,
                "num_samples": self.num_samples,
                "tau": self.tau,
                "num_bins": self.num_bins,
            },
            "mem_len": self.mem_len,
            "age_bin_edges": self.age_edges.tolist(),
            "layers": layers,
            **self.meta,
        }


def _sticky_summary(histograms: list[np.ndarray], num_samples: int, keep: int = 100) -> dict[str, Any]:
    """Mean share of the M samples per bin over all absorptions, and up to ``keep`` of the
    per-absorption histograms (evenly spaced; the figure shows all of them)."""
    if not histograms:
        return {"sticky_mean_share_per_bin": None, "sticky_histograms": {}}
    h = np.asarray(histograms)
    idx = np.unique(np.linspace(0, len(h) - 1, min(keep, len(h))).round().astype(int))
    return {
        "sticky_mean_share_per_bin": (h.mean(0) / num_samples).tolist(),
        "sticky_histograms": {
            str(int(i) + 1): h[i].astype(int).tolist() for i in idx
        },  # absorption # -> counts
    }


# ----------------------------------------------------------------------------------- the reading


@dataclass
class InspectConfig:
    """grid_points: G cells of [0, 1] for the age map; max_tracked: tokens whose stored vector is
    kept for the reconstruction error (evenly spaced over the document); seed: sticky sampling."""

    grid_points: int = 1024
    max_tracked: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("grid_points", self.grid_points, 2)
        check_int("max_tracked", self.max_tracked, 1)
        check_int("seed", self.seed, 0)


@torch.no_grad()
def inspect_document(
    model: torch.nn.Module,
    token_ids: Tensor | list[int],
    seg_len: int,
    config: InspectConfig | None = None,
    device: torch.device | str | None = None,
) -> MemoryReport:
    """Read one document through an ∞-former LM, segment by segment, and record its memory.

    model: an ``InfiniteFormerLM`` with memory_type ``infinite`` or ``infinite_sticky``;
    token_ids: (n,) the document; seg_len: T, tokens per call. Batch 1, eval mode (restored after).
    """
    cfg = config or InspectConfig()
    c = getattr(model, "config", None)
    if c is None or not getattr(c, "uses_ltm", False):
        kind = getattr(c, "memory_type", type(model).__name__)
        raise ValueError(f"model: memory_type {kind!r} has no long-term memory to inspect (infinite* only)")
    check_int("seg_len", seg_len, 1)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten().to(device)
    n = ids.numel()
    if n < 2:
        raise ValueError(f"token_ids: need at least 2 tokens, got {n}")
    ltm_cfg = c.ltm_config()
    heads = c.n_heads
    edges = age_bin_edges(n + 1)
    stride = max(1, math.ceil(n / cfg.max_tracked))
    layers = [
        LayerReport(attention_mass=np.zeros((heads, len(edges) - 1)), outside_mass=np.zeros(heads))
        for _ in model.layers
    ]
    maps = [AgeMap.empty(cfg.grid_points) for _ in model.layers]
    cells = torch.linspace(0, 1, cfg.grid_points + 1, device=device, dtype=torch.float64)
    nll_sum, n_targets = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with seeded_rng(cfg.seed, device):
            state = model.init_state(1, device)
            for start in range(0, n, seg_len):
                seg = ids[start : start + seg_len][None]
                tgt = ids[start + 1 : start + seg_len + 1]
                tgt = torch.cat([tgt, tgt.new_full((seg.shape[1] - tgt.numel(),), -1)])[None]  # -1: no target
                out, state = model(seg, state, targets=tgt, return_record=True)
                nll_sum += float(out.extras["nll_sum"])
                n_targets += int(out.extras["n_targets"])
                for layer, (blk, record) in enumerate(zip(model.layers, out.record, strict=True)):
                    for update in record.updates:
                        maps[layer] = record_absorption(
                            layers[layer], maps[layer], update, stride, ltm_cfg.num_bins
                        )
                    cdf = blk.ltm.normalizer.cdf
                    add_read(layers[layer], maps[layer], cdf, record.read, start, cells, edges)
        measure_reconstruction([blk.ltm for blk in model.layers], state.ltm, maps, layers, n)
    finally:
        model.train(was_training)
    return MemoryReport(
        tokens=n,
        seg_len=seg_len,
        memory_type=c.memory_type,
        num_basis=ltm_cfg.num_basis,
        num_samples=ltm_cfg.samples,
        tau=ltm_cfg.tau,
        num_bins=ltm_cfg.num_bins,
        mem_len=c.mem_len,
        age_edges=edges,
        layers=layers,
        meta={
            "nll_per_token": nll_sum / n_targets,
            "grid_points": cfg.grid_points,
            "tracked_every": stride,
            "seed": cfg.seed,
        },
    )


def record_absorption(
    report: LayerReport, age_map: AgeMap, update: UpdateRecord, stride: int, num_bins: int
) -> AgeMap:
    """Record one absorption of row 0 as ``update`` recorded it (tokens [first, first + L), first =
    the tokens already absorbed): the histogram of its sticky sample positions over num_bins (D)
    bins, the stored (gated) vectors of the tracked tokens (every ``stride``-th); returns the new
    age map. If row 0 did not take the update (``update.absorbed[0]`` False), nothing changes."""
    if not bool(update.absorbed[0]):
        return age_map
    first, count = int(update.first[0]), update.count
    if update.sticky and bool(update.contracted[0]):
        samples = update.samples[0].float().cpu()
        report.sticky_histograms.append(torch.histc(samples, bins=num_bins, min=0, max=1).numpy())
    report.absorptions += 1
    stored = update.vectors[0]  # (L, e) as fit
    for j in range(-(-first // stride) * stride, first + count, stride):
        report.tracked_positions.append(j)
        report.tracked_vectors.append(stored[j - first].float().cpu())
    return age_map.follow(update)


def add_read(
    report: LayerReport,
    age_map: AgeMap,
    cdf: Any,
    read: ReadRecord,
    start: int,
    cells: Tensor,
    edges: np.ndarray,
) -> None:
    """:func:`add_attention` for row 0 of a recorded read whose queries sit at token positions
    start, start + 1, ...; nothing if row 0's memory was empty (no query counted)."""
    if bool(read.valid[0].any()):
        add_attention(report, age_map, cdf, read.mu[0].double(), read.sigma2[0].double(), start, cells, edges)


def add_attention(
    report: LayerReport,
    age_map: AgeMap,
    cdf: Any,
    mu: Tensor,
    sigma2: Tensor,
    start: int,
    cells: Tensor,
    edges: np.ndarray,
) -> None:
    """Accumulate the density mass of T queries (heads H) per age bin: mu, sigma2 (H, T) float64 of
    the queries at token positions start .. start + T - 1; cdf: the normalizer's; cells: (G + 1,)
    float64 cell edges of [0, 1] on mu's device; edges: the age bin edges."""
    heads, t = mu.shape
    c = cdf(cells, mu[..., None], sigma2[..., None])  # (H, T, G + 1)
    mass = (c[..., 1:] - c[..., :-1]).clamp_min(0)  # (H, T, G)
    inside = mass.sum(-1)  # (H, T)
    query_pos = start + np.arange(t) + 0.5  # token coordinates of the queries' centres
    age = query_pos[:, None] - age_map.pos[None, :]  # (T, G) tokens ago
    bins = np.clip(np.searchsorted(edges, age, side="right") - 1, 0, len(edges) - 2)  # (T, G)
    idx = torch.as_tensor(bins, device=mass.device).expand(heads, -1, -1).reshape(heads, -1)
    hist = torch.zeros(heads, len(edges) - 1, dtype=mass.dtype, device=mass.device)
    hist.scatter_add_(1, idx, mass.reshape(heads, -1))
    report.attention_mass += hist.cpu().numpy()
    report.outside_mass += (t - inside.sum(-1)).cpu().numpy()
    report.queries += t


def measure_reconstruction(
    ltms: Sequence[LongTermAttention],
    states: Sequence[LTMState],
    maps: Sequence[AgeMap],
    layers: Sequence[LayerReport],
    n: int,
) -> None:
    """Relative error of X̄(t*) against each tracked stored vector, t* = where its token sits now
    (row 0 of each layer's final state), after reading n tokens."""
    for ltm, state, age_map, r in zip(ltms, states, maps, layers, strict=True):
        if not r.tracked_positions:
            r.recon_age, r.recon_error = np.zeros(0), np.zeros(0)
            continue
        positions = np.asarray(r.tracked_positions, dtype=np.float64)
        coeffs = state.coeffs[:1]  # (1, N, e)
        where = torch.as_tensor(age_map.locate(positions + 0.5), device=coeffs.device, dtype=coeffs.dtype)
        recon = reconstruct(coeffs, ltm.basis(where))[0].float().cpu()  # (n, e)
        target = torch.stack(r.tracked_vectors)
        norm = target.norm(dim=-1).clamp_min(1e-12)
        err = (recon - target).norm(dim=-1) / norm
        r.recon_age, r.recon_error = n - positions, err.double().numpy()
        r.recon_baseline = float(((target.mean(0) - target).norm(dim=-1) / norm).mean())


# ----------------------------------------------------------------------------------------- output


def write_report(report: MemoryReport, out_dir: str | os.PathLike, title: str = "") -> dict[str, str]:
    """Write inspect.json and the figures (drawn by :mod:`infinite_former.plots`) into out_dir;
    returns {name: file name}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": "inspect.json",
        "attention_age": "attention_age.png",
        "reconstruction": "reconstruction_age.png",
    }
    plot_by_age(
        attention_curves(report),
        out / files["attention_age"],
        ylabel="share of the attention density\n(per half-octave of age)",
        title=title or f"Where the long-term memory is read ({report.tokens:,} tokens)",
        mem_len=report.mem_len,
    )
    plot_by_age(
        reconstruction_curves(report),
        out / files["reconstruction"],
        ylabel="relative error ‖X̄(t) − x‖ / ‖x‖",
        title=title or f"What can still be recovered, by age (end of {report.tokens:,} tokens)",
        mem_len=report.mem_len,
        level=(1.0, "remembering nothing (X̄ = 0)"),
        ylim_bottom=0.0,
    )
    if any(r.sticky_histograms for r in report.layers):
        files["sticky"] = "sticky_samples.png"
        plot_sample_histograms(
            [
                (f"layer {report.layer_id(i)}", np.asarray(r.sticky_histograms))
                for i, r in enumerate(report.layers)
            ],
            out / files["sticky"],
            num_samples=report.num_samples,
            title=title or "Where sticky sampling took the old signal's samples",
        )
    data = {"machine": machine_info(), **report.to_dict(), "files": files}
    write_json(out / "inspect.json", data)
    return files


def attention_curves(report: MemoryReport) -> list[AgeCurve]:
    """Share of the long-term memory's attention density per age bin, one curve per layer."""
    centres = np.sqrt(report.age_edges[:-1] * report.age_edges[1:])
    curves = []
    for i, r in enumerate(report.layers):
        share = report.attention_share(i)
        outside = r.outside_mass.sum() / max(r.queries * r.attention_mass.shape[0], 1)
        keep = share > 0
        label = f"layer {report.layer_id(i)} ({outside:.0%} outside [0, 1])"
        curves.append(AgeCurve(label, centres[keep], share[keep]))
    return curves


def reconstruction_curves(report: MemoryReport) -> list[AgeCurve]:
    """Relative error of the stored vectors recovered from the signal against their age, one curve
    per layer, each with the error of the mean stored vector as its reference."""
    curves = []
    for i, r in enumerate(report.layers):
        centres, err, count = report.reconstruction_by_age(i)
        keep = count > 0
        name = f"layer {report.layer_id(i)}"
        curves.append(
            AgeCurve(name, centres[keep], err[keep], r.recon_baseline, f"{name}: the mean vector, any age")
        )
    return curves


__all__ = [
    "AgeMap",
    "InspectConfig",
    "LayerReport",
    "MemoryReport",
    "age_bin_edges",
    "attention_curves",
    "inspect_document",
    "reconstruction_curves",
    "write_report",
]
