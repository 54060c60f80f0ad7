"""The ∞-former's overhead on small models (issue 17 item 4): this checkout against a base commit.

    python benchmarks/overhead.py --base 2abbc04 --out results/overhead_cpu.json

One torch thread, fp32. The base commit's package is exported (git archive) and imported next to
this checkout's as ``infinite_former_base``, so both run in one process. Every variant is timed
interleaved, step by step (benchmarks/precision.py's ``interleaved``: median process CPU time per
step; the machine is shared, wall time is recorded too):

* sort: one optimizer step of the sorting benchmark's models at length 2048 (64 segments of 32,
  63 of them no-grad passes; benchmarks/sorting.py settings), ∞-former (sticky) and Transformer-XL.
* lm: one step of the Shakespeare LM's models (d 128, 2 layers, seg 128, batch 8;
  benchmarks/lm_shakespeare.py), ∞-former (sticky) and Transformer-XL with the equal budget.
* breakdown: where one layer's memory spends its time at the sorting size (this checkout, no-grad).
* layer: LongTermAttention fwd + bwd at issue 2's size (batch 8, e 512, 8 heads, N = M = L = 512,
  sticky, gate, KL) and plain softmax attention over N keys (the goal: LTM <= 1.2x plain).

Base and new models start from the same weights and see the same batches; the first training
step's loss of each pair is compared (same math: equal to float32 rounding).

--compiled adds a third variant of sort and lm, ``compiled``: this checkout's model run the way
``TrainConfig.compile`` runs it (torch.compile(model, dynamic=False), under the Trainer's recompile
limits), timed in the same rounds, so that the ∞-former compiled is compared with Transformer-XL
eager and compiled side by side.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

from infinite_former import LongTermAttention
from infinite_former.stats import bootstrap_mean_ci
from infinite_former.utils import machine_info, seed_everything, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import lm_shakespeare  # noqa: E402
import sorting  # noqa: E402
from ltm_scaling import FULL, PlainAttention  # noqa: E402
from precision import interleaved  # noqa: E402

OUT = ROOT / "results" / "overhead_cpu.json"
BASE_NAME = "infinite_former_base"
COMPILED = "compiled"  # this checkout's model under torch.compile, as TrainConfig.compile runs it


def import_base(rev: str, into: Path):
    """The package as of commit ``rev``, imported as ``infinite_former_base`` (its imports are relative)."""
    blob = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src/infinite_former"], check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    (into / "src" / "infinite_former").rename(into / BASE_NAME)
    sys.path.insert(0, str(into))
    return importlib.import_module(BASE_NAME)


def train_step(model, opt, batches, init, counter=None):
    """One optimizer step the Trainer's way: no-grad passes, a backward on each train segment."""
    counter = counter if counter is not None else [0]

    def step() -> float:
        segments = batches[counter[0] % len(batches)]
        counter[0] += 1
        state, loss = init(), None
        for seg in segments:
            state = state.reset(seg.reset)
            if not seg.train:
                with torch.no_grad():
                    _, state = model(seg.tokens, state)
                state = state.detach()
                continue
            out, state = model(seg.tokens, state, targets=seg.targets, loss_mask=seg.loss_mask)
            (out.loss + out.aux_loss).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            state = state.detach()
            loss = float(out.loss)
        return loss

    return step


def pair(pkgs: dict, config, make_step) -> dict:
    """{impl: step} for one model config built by every package, from the same weights."""
    steps, reference = {}, None
    for impl, pkg in pkgs.items():
        models = importlib.import_module(f"{pkg.__name__}.models")
        cfg = models.ModelConfig.from_dict(config.to_dict())
        seed_everything(0)
        model = models.InfiniteFormerLM(cfg)
        if reference is None:
            reference = model.state_dict()
        else:
            model.load_state_dict(reference)
        runner = torch.compile(model, dynamic=False) if impl == COMPILED else model
        steps[impl] = make_step(runner, torch.optim.AdamW(model.parameters(), lr=1e-3))
    return steps


def first_loss_gap(steps: dict) -> float:
    """|loss_new - loss_base| of the first step from the same seed (each variant's first call)."""
    losses = []
    for fn in steps.values():
        torch.manual_seed(1)
        losses.append(fn())
    return abs(losses[0] - losses[1])


def sort_steps(pkgs: dict) -> tuple[dict, int, dict]:
    s0 = sorting.base_settings()
    length = max(s0.lengths)
    data = importlib.import_module("infinite_former.data.sorting")
    shard = importlib.import_module("infinite_former.data.segments").Shard(0, 1, s0.batch_size)
    task = data.SortingConfig(length=length, num_symbols=s0.num_symbols, seed=0)
    stream = data.SortingStream(data.SortingGenerator(task), s0.segment_len, shard)
    batches = [list(stream.batch_segments(i)) for i in range(32)]
    steps, gaps = {}, {}
    for name in ("infinite_sticky", "xl"):
        s, memory_type = sorting.variant(s0, name)
        pairs = pair(
            pkgs,
            s.model_config(memory_type),
            lambda m, o: train_step(m, o, batches, lambda m=m: m.init_state(s0.batch_size, "cpu")),
        )
        gaps[name] = first_loss_gap(pairs)
        steps.update({f"sort/{name}/{impl}": fn for impl, fn in pairs.items()})
    return steps, length * s0.batch_size, gaps


def lm_steps(pkgs: dict) -> tuple[dict, int, dict]:
    S = lm_shakespeare.S
    b, seg, v = S["batch_size"], S["seg_len"], S["vocab_size"]
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, v, (32, b, seg + 1), generator=gen)
    steps, gaps = {}, {}
    for name in ("infinite_sticky", "xl_equal"):
        memory_type = "xl" if name.startswith("xl") else name
        cfg = lm_shakespeare._config(memory_type, S["d_inner"])
        if name == "xl_equal":
            cfg = cfg.__class__.from_dict({**cfg.to_dict(), "mem_len": S["mem_len"] + S["num_basis"]})

        def make(model, opt):
            box = [model.init_state(b, "cpu"), 0]

            def step() -> float:
                chunk = data[box[1] % len(data)]
                box[1] += 1
                out, state = model(chunk[:, :-1], box[0], targets=chunk[:, 1:])
                (out.loss + out.aux_loss).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                box[0] = state.detach()
                return float(out.loss)

            return step

        pairs = pair(pkgs, cfg, make)
        gaps[name] = first_loss_gap(pairs)
        steps.update({f"lm/{name}/{impl}": fn for impl, fn in pairs.items()})
    return steps, b * seg, gaps


def layer_steps(pkgs: dict) -> dict:
    c = FULL
    b, e, h, seg = c["batch"], c["d_model"], c["n_heads"], c["segment"]
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(b, seg, e, generator=gen).requires_grad_(True)
    keys = torch.randn(b, c["num_basis"], e, generator=gen)
    steps, reference = {}, None
    for impl, pkg in pkgs.items():
        torch.manual_seed(0)
        ltm = pkg.LongTermAttention(
            pkg.LTMConfig(d_model=e, n_heads=h, num_basis=c["num_basis"], num_samples=c["num_samples"])
        )
        if reference is None:
            reference = ltm.state_dict()
        else:
            ltm.load_state_dict(reference)
        with torch.no_grad():
            state = ltm.update(ltm.init_state(b), torch.randn(b, seg, e, generator=gen))
            _, state = ltm(queries.detach(), torch.randn(b, seg, e, generator=gen), state)
        box = [state]

        def step(ltm=ltm, box=box) -> None:
            out, st, kl = ltm(queries, torch.randn(b, seg, e, generator=gen), box[0], return_kl=True)
            (out.sum() + 1e-6 * kl).backward()
            ltm.zero_grad(set_to_none=True)
            queries.grad = None
            box[0] = st.detach()

        steps[f"ltm/{impl}"] = step
    torch.manual_seed(0)
    plain = PlainAttention(e, h)

    def plain_step() -> None:
        plain(queries, keys).sum().backward()
        plain.zero_grad(set_to_none=True)
        queries.grad = None

    steps["plain"] = plain_step
    return steps


def breakdown_steps() -> dict:
    """The pieces of one layer's memory at the sorting benchmark's size, no-grad (as in 63 of the 64
    segments of a sorting step): update (gate included), gate alone, read, and the read's parts."""
    from infinite_former.memory import bin_mass

    s0 = sorting.base_settings()
    cfg = s0.model_config("infinite_sticky")
    ltm = LongTermAttention(cfg.ltm_config().bind(cfg.d_model, cfg.n_heads))
    gen = torch.Generator().manual_seed(0)
    b, seg, e = s0.batch_size, s0.segment_len, cfg.d_model
    x, q = torch.randn(b, seg, e, generator=gen), torch.randn(b, seg, e, generator=gen)
    with torch.no_grad():
        state = ltm.update(ltm.init_state(b), x)
        _, state, _ = ltm.read(q, state)
        mu, sigma2, values = ltm.densities(q, state)
    window = torch.randn(b * seg, 3 * e, generator=gen)
    weight = torch.randn(e, 3 * e, generator=gen)

    def nograd(fn):
        def step() -> None:
            with torch.no_grad():
                fn()

        return step

    return {
        name: nograd(fn)
        for name, fn in {
            "update (gate included)": lambda: ltm.update(state, x),
            "gate": lambda: ltm.gate_logits(x),
            "read (KL and bin masses included)": lambda: ltm.read(q, state),
            "read: projections of B": lambda: ltm.projections(state),
            "read: densities (projections included)": lambda: ltm.densities(q, state),
            "read: context E_p[ψ]ᵀV": lambda: ltm.normalizer.context(mu, sigma2, values),
            "read: sticky bin masses": lambda: bin_mass(ltm.normalizer.cdf, mu, sigma2, cfg.ltm.num_bins),
            f"a GEMM ({b * seg}×{3 * e})·({3 * e}×{e}), the gate's size": lambda: window @ weight.T,
        }.items()
    }


def per_round(num: list[float], den: list[float]) -> dict:
    """Mean of num[r] / den[r] over the interleaved rounds r (both timed in the same round) and
    its bootstrap 95% CI over rounds (infinite_former.stats)."""
    mean, (lo, hi) = bootstrap_mean_ci([a / b for a, b in zip(num, den)])
    return {"mean": round(mean, 3), "ci95": [round(lo, 3), round(hi, 3)]}


def summarize_training(timing: dict, task: str, tokens: int, impls: list[str]) -> dict:
    names = sorted({k.split("/")[1] for k in timing})
    infinite = next(n for n in names if n.startswith("infinite"))
    xl = next(n for n in names if n.startswith("xl"))
    ms = {k: v["cpu_ms"] for k, v in timing.items()}
    rounds = {k: v["cpu_ms_all"] for k, v in timing.items()}
    return {
        "tokens_per_step": tokens,
        "steps": timing,
        "tokens_per_cpu_s": {k: round(tokens / (v / 1e3), 1) for k, v in ms.items()},
        "speedup_over_base": {n: round(ms[f"{task}/{n}/base"] / ms[f"{task}/{n}/new"], 3) for n in names},
        **(
            {
                "compiled_over_eager": {
                    n: round(ms[f"{task}/{n}/new"] / ms[f"{task}/{n}/{COMPILED}"], 3) for n in names
                },
                "infinite_compiled_over_xl_eager": round(
                    ms[f"{task}/{xl}/new"] / ms[f"{task}/{infinite}/{COMPILED}"], 3
                ),
            }
            if COMPILED in impls
            else {}
        ),
        "infinite_over_xl_tokens_per_s": {
            impl: round(ms[f"{task}/{xl}/{impl}"] / ms[f"{task}/{infinite}/{impl}"], 3) for impl in impls
        },
        "per_round": {  # ratios of the steps timed in the same round: mean and 95% CI over rounds
            "speedup_over_base": {
                n: per_round(rounds[f"{task}/{n}/base"], rounds[f"{task}/{n}/new"]) for n in names
            },
            "infinite_over_xl_tokens_per_s": {
                impl: per_round(rounds[f"{task}/{xl}/{impl}"], rounds[f"{task}/{infinite}/{impl}"])
                for impl in impls
            },
            **(
                {
                    "compiled_over_eager": {
                        n: per_round(rounds[f"{task}/{n}/new"], rounds[f"{task}/{n}/{COMPILED}"])
                        for n in names
                    },
                    "infinite_compiled_over_xl_eager": per_round(
                        rounds[f"{task}/{xl}/new"], rounds[f"{task}/{infinite}/{COMPILED}"]
                    ),
                }
                if COMPILED in impls
                else {}
            ),
        },
    }


def summarize_layer(timing: dict, impls) -> dict:
    ms = {k: v["cpu_ms"] for k, v in timing.items()}
    rounds = {k: v["cpu_ms_all"] for k, v in timing.items()}
    return {
        "what": "fwd + bwd of one segment: LTM (batch 8, e 512, 8 heads, N = M = L = 512, sticky, "
        "gate, KL) and plain softmax attention over N keys",
        "steps": timing,
        "speedup_over_base": round(ms["ltm/base"] / ms["ltm/new"], 3),
        "ltm_over_plain": {i: round(ms[f"ltm/{i}"] / ms["plain"], 3) for i in impls},
        "per_round": {
            "speedup_over_base": per_round(rounds["ltm/base"], rounds["ltm/new"]),
            "ltm_over_plain": {i: per_round(rounds[f"ltm/{i}"], rounds["plain"]) for i in impls},
        },
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="2abbc04", help="the commit to compare against")
    p.add_argument("--reps", type=int, default=7, help="timed steps per variant")
    p.add_argument(
        "--parts", nargs="+", default=["sort", "lm", "layer"], choices=["sort", "lm", "layer", "breakdown"]
    )
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--summarize-only", action="store_true", help="recompute the summaries of --out")
    p.add_argument("--compiled", action="store_true", help="add this checkout compiled to sort and lm")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch._dynamo.config.recompile_limit = 256  # one code object serves every model: room for all
    torch._dynamo.config.fail_on_recompile_limit_hit = True  # never a silent fall-back to eager
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True).stdout
    )
    new = importlib.import_module("infinite_former")
    if args.summarize_only:  # recompute the summaries from the saved per-round times
        out = Path(args.out)
        result = json.loads(out.read_text())
        for part in ("sort", "lm", "layer"):
            if part in result:
                kept = {k: v for k, v in result[part].items() if k not in ("steps",)}
                impls = ["new", "base"] + (
                    [COMPILED] if any(k.endswith(f"/{COMPILED}") for k in result[part]["steps"]) else []
                )
                if part == "layer":
                    fresh = summarize_layer(result[part]["steps"], impls)
                else:
                    fresh = summarize_training(result[part]["steps"], part, kept["tokens_per_step"], impls)
                result[part] = {**kept, **fresh}
        write_json(out, result)
        print(f"wrote {out}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        pkgs = {"new": new, "base": import_base(args.base, Path(tmp))}
        meta: dict = {
            "machine": machine_info(precision="fp32"),
            "base": args.base,
            "new": head + ("+uncommitted" if dirty else ""),
            "command": "python benchmarks/overhead.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
        }
        for part in args.parts:
            if part == "breakdown":  # this checkout only: microseconds per call
                timing = interleaved(breakdown_steps(), args.reps * 20)
                res = {
                    "what": "one layer's memory at the sorting benchmark's size (batch 8, L 32, e 64, 4 heads, "
                    "N = M = 32, D = 128 bins), no-grad, this checkout; median process CPU microseconds per call",
                    "cpu_us": {k: round(v["cpu_ms"] * 1e3, 1) for k, v in timing.items()},
                }
            elif part == "layer":
                res = summarize_layer(interleaved(layer_steps(pkgs), args.reps), list(pkgs))
            else:
                impls = {**pkgs, COMPILED: new} if args.compiled else pkgs
                steps, tokens, gaps = {"sort": sort_steps, "lm": lm_steps}[part](impls)
                res = summarize_training(interleaved(steps, args.reps), part, tokens, list(impls))
                res["first_step_loss_gap_new_vs_base"] = gaps
            print(part, {k: v for k, v in res.items() if k != "steps"}, flush=True)
            # each part replaces its entry; parts run another time (--parts) are kept
            out = Path(args.out)
            result = json.loads(out.read_text()) if out.exists() else {}
            result.update(meta)
            result[part] = {**res, "command": meta["command"], "new": meta["new"]}
            write_json(out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
