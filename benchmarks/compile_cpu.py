"""torch.compile on the CPU (issue 17): graph breaks of the memory's hot path, compiled vs eager.

    python benchmarks/compile_cpu.py            # -> results/compile_cpu.json (rewritten after each item)

One torch thread. 1. torch._dynamo.explain of sticky sampling + the update (LongTermAttention.update
on a non-empty memory) and of a whole layer step (update + read): graph and break counts, with the
break reasons. 2. Process CPU time per call, eager vs torch.compile (inductor), fp32 and bf16
(autocast), interleaved after warm-up (compilation excluded, its time recorded): the LTM layer's
fwd + bwd (benchmarks/precision.py's layer steps) and one training step of the sorting and
Shakespeare-LM ∞-formers (sticky). ``--compile`` is worth offering where compiled/eager <= 1/1.3.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from infinite_former import LongTermAttention, LTMConfig
from infinite_former.utils import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import precision  # noqa: E402

OUT = ROOT / "results" / "compile_cpu.json"


def explain_counts() -> dict:
    torch.manual_seed(0)
    ltm = LongTermAttention(LTMConfig(d_model=64, n_heads=4, num_basis=64, num_samples=64, num_bins=32))
    x = torch.randn(2, 32, 64)
    q = torch.randn(2, 32, 64, requires_grad=True)
    with torch.no_grad():
        state = ltm.update(ltm.init_state(2), x)
        _, state = ltm(q.detach(), x, state)  # non-empty memory with sticky bin mass
    out = {}
    for name, fn, args in (
        ("sticky_update", lambda s, v: ltm.update(s, v), (state, x)),
        ("layer_step", lambda qq, v, s: ltm(qq, v, s, return_kl=True), (q, x, state)),
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


def compare(steps: dict, reps: int) -> dict:
    """{name: eager vs compiled CPU ms} for steps {name: (eager_fn, compiled_fn)}."""
    res = {}
    for name, (eager, compiled) in steps.items():
        c0, t0 = time.process_time(), time.perf_counter()
        compiled()  # compiles
        compiled()
        compile_cpu_s, compile_wall_s = time.process_time() - c0, time.perf_counter() - t0
        eager()
        e_ms, c_ms = [], []
        for _ in range(reps):  # interleaved
            c = time.process_time()
            eager()
            e_ms.append(1e3 * (time.process_time() - c))
            c = time.process_time()
            compiled()
            c_ms.append(1e3 * (time.process_time() - c))
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
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--items", nargs="*", default=["explain", "layer", "lm", "sort"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result: dict = {
        "machine": machine_info(precision="fp32 and bf16 (autocast)"),
        "command": "python benchmarks/compile_cpu.py " + " ".join(sys.argv[1:]),
    }
    for item in args.items:
        if item == "explain":
            result["explain"] = explain_counts()
        else:
            make = {
                "layer": precision.layer_steps,
                "lm": lambda: precision.lm_train_steps(models=("infinite_sticky",))[0],
                "sort": lambda: precision.sort_train_steps(models=("infinite_sticky",))[0],
            }[item]
            torch._dynamo.reset()
            eager, compiled = make(), make()
            pairs = {}
            for name, fn in eager.items():
                if name.startswith("plain"):
                    continue
                pairs[name] = (fn, torch.compile(compiled[name]))
            result[item] = compare(pairs, args.reps)
        write_json(OUT, result)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
