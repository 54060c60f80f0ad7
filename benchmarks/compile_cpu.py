"""torch.compile on the CPU (issue 17): graph breaks of the memory's hot path, compiled vs eager.

    python benchmarks/compile_cpu.py            # -> results/compile_cpu.json (rewritten after each item)

One torch thread. 1. torch._dynamo.explain of sticky sampling + the update (LongTermAttention.update
on a non-empty memory) and of a whole layer step (update + read): graph and break counts, with the
break reasons. 2. Process CPU time per call, eager vs torch.compile (inductor), fp32 and bf16
(autocast), interleaved after warm-up (compilation excluded, its time recorded): the LTM layer's
fwd + bwd (benchmarks/precision.py's layer steps) and one training step (benchmarks/precision.py's
training steps) of the sorting and Shakespeare-LM models, ∞-former (sticky) and Transformer-XL, with
the model compiled as ``Trainer`` compiles it with ``TrainConfig.compile`` (``torch.compile(model,
dynamic=False)``, under the Trainer's recompile limits; the segment loop, backward and optimizer step
stay eager). ``--dynamic`` compiles with torch's default automatic dynamic shapes instead, as the
first run of this benchmark did (kept under ``history``). ``--compile`` is worth offering where
compiled/eager >= 1.3. Each item run replaces its entry in the results file; the others are kept.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch

from infinite_former import LongTermAttention, LTMConfig
from infinite_former.models import InfiniteFormerLM
from infinite_former.utils import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import precision  # noqa: E402
import sorting  # noqa: E402

OUT = ROOT / "results" / "compile_cpu.json"


def explain_counts() -> dict:
    torch.manual_seed(0)
    ltm = LongTermAttention(LTMConfig(d_model=64, n_heads=4, num_basis=64, num_samples=64, num_bins=32))
    x = torch.randn(2, 32, 64)
    q = torch.randn(2, 32, 64, requires_grad=True)
    with torch.no_grad():
        state = ltm.update(ltm.init_state(2), x)
        _, state = ltm(q.detach(), x, state)  # non-empty memory with sticky bin mass
    # the sorting benchmark's ∞-former (sticky), in the middle of a sequence (memories filled)
    s0 = sorting.base_settings()
    torch.manual_seed(0)
    model = InfiniteFormerLM(s0.model_config("infinite_sticky"))
    tokens = torch.randint(0, s0.vocab_size, (s0.batch_size, s0.segment_len))
    with torch.no_grad():
        lm_state = model.init_state(s0.batch_size, "cpu")
        for _ in range(4):  # the 4th segment's update is the first contraction of an old memory
            _, lm_state = model(tokens, lm_state)
    out = {}
    for name, fn, args in (
        ("sticky_update", lambda s, v: ltm.update(s, v), (state, x)),
        ("layer_step", lambda qq, v, s: ltm(qq, v, s, return_kl=True), (q, x, state)),
        ("sort_model_forward", lambda t, s: model(t, s, targets=t), (tokens, lm_state)),
    ):
        torch._dynamo.reset()
        e = torch._dynamo.explain(fn)(*args)
        out[name] = {
            "graphs": e.graph_count,
            "graph_breaks": e.graph_break_count,
            "break_reasons": sorted({str(b.reason).splitlines()[0][:200] for b in e.break_reasons}),
        }
        print(name, out[name], flush=True)
    return out


def compare(steps: dict, reps: int, done=None) -> dict:
    """{name: eager vs compiled CPU ms} for steps {name: (eager_fn, compiled_fn)}; done(res) is
    called after each step's result (to save partial results)."""
    res = {}
    for name, (eager, compiled) in steps.items():
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(3):  # compiles (and recompiles for the memory widths a step goes through)
            compiled()
        compile_cpu_s, compile_wall_s = time.process_time() - c0, time.perf_counter() - t0
        eager()
        e_ms, c_ms = [], []
        for rep in range(reps):  # interleaved, every other round compiled first
            for fn, ms in ((eager, e_ms), (compiled, c_ms))[:: 1 if rep % 2 == 0 else -1]:
                c = time.process_time()
                fn()
                ms.append(1e3 * (time.process_time() - c))
        e, cm = sorted(e_ms)[reps // 2], sorted(c_ms)[reps // 2]
        res[name] = {
            "eager_cpu_ms": round(e, 2),
            "compiled_cpu_ms": round(cm, 2),
            "speedup": round(e / cm, 3),
            "offer_compile": e / cm >= 1.3,
            "compile_cpu_s": round(compile_cpu_s, 1),
            "compile_wall_s": round(compile_wall_s, 1),
        }
        print(name, res[name], flush=True)
        if done is not None:
            done(res)
    return res


def training_pairs(item: str, dynamic: bool = False) -> dict:
    """{name: (eager step, compiled step)}: the same models (same seed) with and without compile."""
    make = {
        "sort": lambda wrap: precision.sort_train_steps(models=("infinite_sticky", "xl"), wrap=wrap)[0],
        "lm": lambda wrap: precision.lm_train_steps(models=("infinite_sticky", "xl_equal"), wrap=wrap)[0],
    }[item]
    compile_model = torch.compile if dynamic else functools.partial(torch.compile, dynamic=False)
    eager, compiled = make(None), make(compile_model)
    names = sorted(eager, key=lambda n: (n.split("/")[2] != "fp32", n))  # fp32 first
    return {name: (eager[name], compiled[name]) for name in names}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--items", nargs="*", default=["explain", "layer", "lm", "sort"])
    p.add_argument("--out", default=str(OUT))
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="torch.compile's default (automatic dynamic shapes) for the models",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    # one code object (InfiniteFormerLM.forward) serves every model, precision, grad mode and
    # memory width here: room for all of them, and an error rather than a fall-back to eager
    torch._dynamo.config.recompile_limit = 256
    torch._dynamo.config.accumulated_recompile_limit = 4096
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    out = Path(args.out)
    command = "python benchmarks/compile_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:])

    def save(item: str, res: dict) -> None:
        # re-read before writing: another process may have written its items meanwhile
        result = json.loads(out.read_text()) if out.exists() else {}
        result["machine"] = machine_info(precision="fp32 and bf16 (autocast)")
        result[item] = res
        result.setdefault("commands", {})[item] = command
        write_json(out, result)

    for item in args.items:
        torch._dynamo.reset()
        if item == "explain":
            res = explain_counts()
        elif item == "layer":
            eager, compiled = precision.layer_steps(), precision.layer_steps()
            pairs = {
                n: (fn, torch.compile(compiled[n])) for n, fn in eager.items() if not n.startswith("plain")
            }
            res = compare(pairs, args.reps, lambda r, item=item: save(item, {**r, "partial": True}))
        else:
            res = compare(
                training_pairs(item, args.dynamic),
                args.reps,
                lambda r, item=item: save(item, {**r, "partial": True}),
            )
            res["shapes"] = "automatic dynamic (torch default)" if args.dynamic else "static (dynamic=False)"
            for p_ in precision.PRECISIONS:  # ∞-former over XL tokens/s (= XL ms / ∞-former ms)
                inf, xl = (
                    next(v for k, v in res.items() if k.split("/")[1].startswith(m) and k.endswith(p_))
                    for m in ("infinite", "xl")
                )
                res[f"infinite_over_xl/{p_}"] = {
                    **{
                        mode: round(xl[f"{mode}_cpu_ms"] / inf[f"{mode}_cpu_ms"], 3)
                        for mode in ("eager", "compiled")
                    },
                    "infinite_compiled_over_xl_eager": round(xl["eager_cpu_ms"] / inf["compiled_cpu_ms"], 3),
                }
        save(item, res)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
