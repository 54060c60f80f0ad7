"""How far back can the long-term memory give a token back? Model-free reconstruction error by age.

    python benchmarks/reach.py            # full run (a few minutes, one thread)
    python benchmarks/reach.py --quick    # smoke version (seconds)

Writes results/reach_cpu.json and results/reach_cpu.png (results/reach_quick.* with --quick).

A stream of T vectors is absorbed block by block (L = M = N tokens per block, λ = 1, no gate) by
LongTermAttention.update, the same update the models use. The introspection's age map (which
follows every update's τ_k and sample positions) says where each token's content sits at the end;
the relative error ‖X̄(t_j) − x_j‖ / ‖x_j‖ is averaged per octave of age (tokens ago). 1 is the
error of giving back zero (all signals are centred).

Signals (each centred, unit variance per channel):
* white noise, 32 channels (token-like: no two tokens share content);
* AR(1), x_t = ρ x_{t-1} + √(1-ρ²) ε_t, 32 channels, ρ ∈ {0.9, 0.98, 0.995} (correlation lengths
  -1/ln ρ ≈ 9.5, 49.5, 200 tokens);
* the final hidden states (input of ln_f, centred) of a Transformer-XL LM trained here for a short
  time on ../shared/data/shakespeare (bytes, see ``train_lm``; the environment variable
  INFINITE_FORMER_SHAKESPEARE names another folder), on the validation text.

Settings: schedule (fixed τ = 0.5 (paper), fixed τ = 0.75, uniform_time, power p = 2) × RBF widths
(the paper's sorting {0.01, 0.05}, GPT-2 {0.005, 0.01}, and c·{1, 2.5}/N for c = ½, 1, 2) ×
sampling (uniform; sticky) × N ∈ {128, 512}.

Sticky sampling needs attention mass, and there is no model here: every block's bin mass is that
of a FIXED synthetic query pattern, three Gaussian densities 𝒩(μ, 0.05²) at μ = 0.3, 0.8, 0.95 (a
mix that favours the recent end, as trained LMs do), so the samples of the old signal crowd
around those points. With a real model the pattern follows the queries.

Settings that LTMConfig refuses (a non-fixed schedule with widths < 1/N, whose repeated refits
diverged in this benchmark's first run, 2026-12-05) are written as rows with ``refused`` (the
error) and no errors by age. results/reach_cpu.json was written by that first run, before the rule
existed, and so still holds those settings' measured (diverging) errors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from infinite_former import LongTermAttention, LTMConfig
from infinite_former.introspection import AgeMap
from infinite_former.utils import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("INFINITE_FORMER_SHAKESPEARE", ROOT.parent / "shared" / "data" / "shakespeare"))
STICKY_PATTERN = ((0.3, 0.05), (0.8, 0.05), (0.95, 0.05))  # (μ, σ) of the synthetic query densities
SCHEDULES = {
    "fixed τ=0.5 (paper)": dict(schedule="fixed", tau=0.5),
    "fixed τ=0.75": dict(schedule="fixed", tau=0.75),
    "uniform_time": dict(schedule="uniform_time"),
    "power p=2": dict(schedule="power", power=2.0),
}
WIDTHS = {
    "{0.01,0.05} (sorting)": lambda n: (0.01, 0.05),
    "{0.005,0.01} (GPT-2)": lambda n: (0.005, 0.01),
    "{0.5,1.25}/N": lambda n: (0.5 / n, 1.25 / n),
    "{1,2.5}/N (auto)": lambda n: (1.0 / n, 2.5 / n),
    "{2,5}/N": lambda n: (2.0 / n, 5.0 / n),
}


def cpu_flags() -> list[str]:
    """The CPU flags that matter for torch's kernels (AVX/AMX families)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return sorted(f for f in line.split(":", 1)[-1].split() if f.startswith(("avx", "amx", "fma", "f16c")))


# ------------------------------------------------------------------------------------- signals


def ar1(num_tokens: int, channels: int, rho: float, gen: torch.Generator) -> torch.Tensor:
    """x_t = ρ x_{t-1} + √(1-ρ²) ε_t, stationary from the start: (T, channels) float64."""
    eps = torch.randn(num_tokens, channels, generator=gen, dtype=torch.float64)
    x = torch.empty_like(eps)
    x[0] = eps[0]
    scale = math.sqrt(1 - rho**2)
    for t in range(1, num_tokens):
        x[t] = rho * x[t - 1] + scale * eps[t]
    return x


def train_lm(num_tokens: int, steps: int, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Train a small Transformer-XL LM on Shakespeare bytes, return its final hidden states on
    num_tokens of the validation text (T, e) float64 (centred) and what was trained."""
    from infinite_former.models import InfiniteFormerLM, ModelConfig

    torch.manual_seed(seed)
    train = torch.tensor(list(b"".join(p.read_bytes() for p in sorted((DATA / "train").glob("*.txt")))))
    valid = torch.tensor(list(b"".join(p.read_bytes() for p in sorted((DATA / "valid").glob("*.txt")))))
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_inner=128, dropout=0.0,
                      mem_len=64, memory_type="xl")  # fmt: skip
    model = InfiniteFormerLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    seg, batch = 64, 16
    losses = []
    for _ in range(steps):
        starts = torch.randint(0, len(train) - seg - 1, (batch,))
        x = torch.stack([train[s : s + seg + 1] for s in starts.tolist()])
        out, _ = model(x[:, :-1], None, targets=x[:, 1:])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    model.eval()
    hidden = []
    hook = model.ln_f.register_forward_pre_hook(lambda m, args: hidden.append(args[0].detach()))
    state = None
    with torch.no_grad():
        for s in range(0, num_tokens, seg):
            _, state = model(valid[None, s : s + seg], state)
    hook.remove()
    h = torch.cat(hidden, dim=1)[0].double()  # (T, e)
    info = dict(config=cfg.to_dict(), steps=steps, batch=batch, seg_len=seg, lr=2e-3,
                final_train_loss_nats=float(np.mean(losses[-20:])), text="validation bytes, from the start")  # fmt: skip
    return h - h.mean(0), info


def signals(num_tokens: int, lm_steps: int) -> tuple[dict[str, torch.Tensor], dict]:
    gen = torch.Generator().manual_seed(0)
    out = {"white noise": torch.randn(num_tokens, 32, generator=gen, dtype=torch.float64)}
    for rho in (0.9, 0.98, 0.995):
        out[f"AR(1) ρ={rho}"] = ar1(num_tokens, 32, rho, gen)
    lm, info = train_lm(num_tokens, lm_steps)
    out["LM hidden states"] = lm / lm.std()
    return out, info


# ---------------------------------------------------------------------------------- streaming


def sticky_mass(num_bins: int) -> torch.Tensor:
    """The fixed synthetic query pattern's mass per bin of [0, 1]: (1, D) float64."""
    edges = torch.linspace(0, 1, num_bins + 1, dtype=torch.float64)
    cdf = sum(torch.special.ndtr((edges - mu) / sd) for mu, sd in STICKY_PATTERN)
    return (cdf[1:] - cdf[:-1])[None]


def stream_errors(x: torch.Tensor, config: LTMConfig, block: int, age_edges: np.ndarray) -> np.ndarray:
    """Absorb x (T, e) in blocks; the mean relative error per age bin at the end: (bins,)."""
    ltm = LongTermAttention(config).double()
    state = ltm.init_state(1, dtype=torch.float64)
    mass = sticky_mass(config.num_bins)
    gen = torch.Generator().manual_seed(0)
    num_tokens = x.shape[0]
    age_map = AgeMap.empty(max(8 * num_tokens, 4096))
    for start in range(0, num_tokens, block):
        if config.sticky:
            state.bin_mass = mass.clone()
        state, update = ltm.update(state, x[None, start : start + block], generator=gen, return_record=True)
        age_map = age_map.follow(update)  # the τ_k and sample positions this update used
    where = torch.as_tensor(age_map.locate(np.arange(num_tokens) + 0.5))
    rec = ltm.basis(where) @ state.coeffs[0]  # (T, e)
    err = ((rec - x).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).numpy()
    age = num_tokens - np.arange(num_tokens) - 0.5
    idx = np.clip(np.searchsorted(age_edges, age, side="right") - 1, 0, len(age_edges) - 2)
    total = np.bincount(idx, weights=err, minlength=len(age_edges) - 1)
    count = np.bincount(idx, minlength=len(age_edges) - 1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


# ---------------------------------------------------------------------------------------- run


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    num_tokens = 2048 if quick else 16384
    sizes = (32, 64) if quick else (128, 512)
    schedules = SCHEDULES if not quick else dict(list(SCHEDULES.items())[::2])
    widths = WIDTHS if not quick else dict(list(WIDTHS.items())[::3])
    t0 = time.time()
    sigs, lm_info = signals(num_tokens, 20 if quick else 400)
    lm_seconds = time.time() - t0
    edges = 2.0 ** np.arange(0, math.ceil(math.log2(num_tokens)) + 1)
    edges[0] = 0.0
    rows = []
    for n in sizes:
        for sticky in (False, True):
            for sname, skw in schedules.items():
                for wname, wfn in widths.items():
                    try:
                        config = LTMConfig(d_model=2, n_heads=1, num_basis=n, num_samples=n, widths=wfn(n),
                                           ridge_lambda=1.0, gate=False, sticky=sticky, num_bins=128, **skw)  # fmt: skip
                    except ValueError as refusal:  # e.g. a non-fixed schedule with widths < 1/N
                        rows += [dict(num_basis=n, sampling="sticky" if sticky else "uniform", schedule=sname,
                                      widths=wname, widths_values=list(wfn(n)), signal=signal, refused=str(refusal),
                                      error_by_age=[None] * (len(edges) - 1)) for signal in sigs]  # fmt: skip
                        continue
                    for signal, x in sigs.items():
                        cfg = LTMConfig(**{**config.to_dict(), "d_model": x.shape[1]})
                        err = stream_errors(x, cfg, n, edges)
                        rows.append(dict(num_basis=n, sampling="sticky" if sticky else "uniform",
                                         schedule=sname, widths=wname, widths_values=list(cfg.basis_widths),
                                         signal=signal, error_by_age=[None if np.isnan(v) else float(v) for v in err]))  # fmt: skip
            print(f"N={n} sticky={sticky}: {time.time() - t0:.0f}s", flush=True)
    return dict(
        benchmark="reach",
        description=__doc__.split("\n\n")[0],
        method=(
            f"{num_tokens} tokens absorbed in blocks of L = M = N by LongTermAttention.update (λ = 1, no "
            "gate, float64); each token read back at its position from the introspection age map; mean "
            "relative error per age bin [edge_i, edge_i+1) tokens ago; 1 = giving back zero."
        ),
        sticky_pattern=[dict(mu=m, sigma=s) for m, s in STICKY_PATTERN],
        num_tokens=num_tokens,
        age_bin_edges=edges.tolist(),
        lm=lm_info,
        seconds=dict(lm_training=lm_seconds, total=time.time() - t0),
        machine={**machine_info(), "cpu_flags": cpu_flags()},
        rows=rows,
    )


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    signals_ = list(dict.fromkeys(r["signal"] for r in rows))
    sizes = sorted({r["num_basis"] for r in rows})
    edges = np.array(result["age_bin_edges"])
    centres = np.sqrt(np.maximum(edges[:-1], 0.5) * edges[1:])
    fig, axes = plt.subplots(len(sizes) * 2, len(signals_), figsize=(4 * len(signals_), 3.2 * 2 * len(sizes)),
                             sharex=True, sharey=True, squeeze=False)  # fmt: skip
    schedules = list(dict.fromkeys(r["schedule"] for r in rows))
    widths = list(dict.fromkeys(r["widths"] for r in rows))
    colours = plt.cm.tab10(np.arange(len(schedules)))
    styles = ["-", "--", ":", "-.", (0, (1, 3))]
    for r in rows:
        i = sizes.index(r["num_basis"]) * 2 + (r["sampling"] == "sticky")
        ax = axes[i, signals_.index(r["signal"])]
        y = np.array([np.nan if v is None else v for v in r["error_by_age"]])
        ax.plot(centres, y, color=colours[schedules.index(r["schedule"])],
                linestyle=styles[widths.index(r["widths"]) % len(styles)], lw=1.2,
                label=f"{r['schedule']}, σ {r['widths']}")  # fmt: skip
    for (i, j), ax in np.ndenumerate(axes):
        ax.set_xscale("log")
        ax.set_ylim(0, 1.3)
        ax.axhline(1.0, color="grey", lw=0.6)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.set_title(signals_[j], fontsize=10)
        if j == 0:
            ax.set_ylabel(f"N={sizes[i // 2]}, {'sticky' if i % 2 else 'uniform'}\nrelative error")
        if i == axes.shape[0] - 1:
            ax.set_xlabel("age (tokens ago)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.suptitle(
        "What the memory gives back, by age (1 = nothing); colour: schedule, line: widths", fontsize=11
    )
    fig.tight_layout(rect=(0, 0.09, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


BANDS = ((0, "last block"), (512, "512-1k"), (1024, "1-2k"), (2048, "2-8k"), (8192, "8-16k"))


def table(result: dict, sampling: str = "uniform") -> str:
    """Mean relative error per age band (the last block: ages below N), one row per setting."""
    edges = np.array(result["age_bin_edges"])
    lines = ["| N | signal | schedule | widths | " + " | ".join(b for _, b in BANDS) + " |"]
    lines.append("|" + "---|" * (4 + len(BANDS)))
    for r in result["rows"]:
        if r["sampling"] != sampling:
            continue
        err = np.array([np.nan if v is None else v for v in r["error_by_age"]])
        cells = []
        for i, (lo, _) in enumerate(BANDS):
            lo, hi = (
                (0, r["num_basis"]) if i == 0 else (lo, BANDS[i + 1][0] if i + 1 < len(BANDS) else np.inf)
            )
            sel = (edges[:-1] >= lo) & (edges[1:] <= hi)
            cells.append(f"{np.nanmean(err[sel]):.2f}" if sel.any() else "-")
        lines.append(
            f"| {r['num_basis']} | {r['signal']} | {r['schedule']} | {r['widths']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version (seconds)")
    parser.add_argument("--out", default=None, help="output stem (default results/reach_cpu or reach_quick)")
    parser.add_argument(
        "--table", choices=("uniform", "sticky"), help="print the age-band table of the results"
    )
    args = parser.parse_args()
    stem = Path(args.out) if args.out else ROOT / "results" / ("reach_quick" if args.quick else "reach_cpu")
    if args.table:
        print(table(json.loads(stem.with_suffix(".json").read_text()), args.table))
        return
    result = run(args.quick)
    write_json(stem.with_suffix(".json"), result)
    plot(result, stem.with_suffix(".png"))
    print(f"wrote {stem}.json and .png in {result['seconds']['total']:.0f}s")


if __name__ == "__main__":
    main()
