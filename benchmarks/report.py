"""Render the results tables of the docs (docs/results.md) from results/*.json.

    python benchmarks/report.py            # rewrite the tables in docs/results.md
    python benchmarks/report.py --check    # exit 1 if docs/results.md differs from the JSON files

Each table lives in docs/results.md between `<!-- results:NAME:start -->` and
`<!-- results:NAME:end -->`; tests/test_readme_results.py runs the check, so a
number in the docs can only come from a committed results file.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from infinite_former.models import memory_labels

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
RESULTS_PAGE = ROOT / "docs" / "results.md"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _params(n: dict | int) -> str:
    """A parameter count: total, and what the memory adds where it adds weights."""
    if isinstance(n, int):
        return f"{n:,}"
    return f"{n['total']:,}" + (f" ({n['memory']:,} memory)" if n["memory"] else "")


def _machine(m: dict) -> str:
    threads = m.get("torch_threads")
    where = m.get("gpu") or m.get("cpu_model") or m.get("processor", "?")
    return f"{where}, {m.get('cpu_count')} cores, torch {m.get('torch')}" + (
        f", {threads} torch thread(s)" if threads else ""
    )


def ltm_scaling() -> str:
    d = _load("ltm_scaling.json")
    c = d["config"]
    plain = {r["context_tokens"]: r for r in d["plain_attention"]["rows"]}
    full = {r["context_tokens"]: r for r in d["full_attention"]["rows"]}
    lines = [
        f"Batch {c['batch']}, e = {c['d_model']}, {c['n_heads']} heads, N = {c['num_basis']}, "
        f"M = {c['num_samples']}, L = {c['segment_L']}, sticky = {c['sticky']}, gate = {c['gate']}; "
        "forward + backward of one segment, refit included. Machine: " + _machine(d["machine"]) + ".",
        "",
        "| context tokens | ∞-former LTM ms | LTM peak MB | LTM state MB | plain attention over 512 keys ms "
        "| LTM / plain | full causal attention ms | full attention peak MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    contexts = sorted({*plain, *full, *(r["context_tokens"] for r in d["rows"])})
    ltm = {r["context_tokens"]: r for r in d["rows"]}
    for n in contexts:
        r, p, f = ltm.get(n, {}), plain.get(n, {}), full.get(n, {})
        full_ms = "out of memory" if f.get("oom") else _fmt(f.get("ms_per_segment"), 0)
        lines.append(
            f"| {n:,} | {_fmt(r.get('ms_per_segment'), 0)} | {_fmt(r.get('peak_mb'))} "
            f"| {_fmt(r.get('state_mb'))} | {_fmt(p.get('ms_per_segment'), 0)} "
            f"| {_fmt(r.get('ratio_to_plain'), 2)} | {full_ms} | {_fmt(f.get('peak_mb'))} |"
        )
    q = d["ratios"]
    lines += [
        "",
        f"LTM time, max/min over contexts: {q['ltm_time_max_over_min']:.3f}; peak memory max/min: "
        f"{q['ltm_peak_max_over_min']:.3f}; LTM / plain attention time: {q['ltm_over_plain_time']:.2f}. "
        f"Full attention ran in subprocesses limited to {d['full_attention']['mem_limit_gb']:g} GiB. "
        f"The stream to 1M tokens was absorbed with batch {d['stream']['stream_batch']} and its state "
        "copied to the timed batch (the JSON says how).",
    ]
    return "\n".join(lines)


def edge_padding() -> str:
    d = _load("edge_padding.json")
    c = d["config"]
    lines = [
        f"L = {c['L']} points, N = {c['N']} RBFs, widths {tuple(c['widths'])}, λ = {c['ridge_lambda']}; "
        f"signal {d['signal']}.",
        "",
        "| edge padding | relative L2 error | first 2 % of [0, 1] | last 2 % of [0, 1] |",
        "|---|---:|---:|---:|",
    ]
    for r in d["rows"]:
        lines.append(
            f"| {'on (official)' if r['edge_padding'] else 'off (our default)'} | {r['rel_l2_error']:.2%} "
            f"| {r['rel_l2_error_first_2pct']:.2%} | {r['rel_l2_error_last_2pct']:.2%} |"
        )
    return "\n".join(lines)


def generation() -> str:
    d = _load("generation_cpu.json")
    c = d["config"]
    lines = [
        f"{c['model']}: {c['layers']} layers, {c['hidden']} wide, {c['heads']} heads, MLP {c['intermediate']}, "
        f"vocab {c['vocab']:,}; memory N = {c['num_basis']}, M = {c['num_samples']}, block {c['block_size']}, "
        f"every memory row measured at position {c['position']} of its block. Batch 1, greedy, "
        f"{c['new_tokens']} new tokens, median of {c['repeats']}. Machine: " + _machine(d["machine"]) + ".",
        "",
        "| model | tokens before generating | ms per token (median) | state MB |",
        "|---|---:|---:|---:|",
    ]
    for r in d["baseline"]:
        lines.append(
            f"| base model, DynamicCache | {r['context_tokens']:,} | {r['token_ms_median']:.0f} | {r['state_mb']:.1f} |"
        )
    for r in d["with_memory"]:
        how = ""
        if r["tokens_absorbed_synthetic"]:
            how = f" ({r['tokens_read_full_model']:,} read by the model, {r['tokens_absorbed_synthetic']:,} fast-forwarded)"
        lines.append(
            f"| with memory | {r['tokens_read']:,}{how} | {r['token_ms_median']:.0f} | {r['state_mb']:.1f} |"
        )
    return "\n".join(lines)


def overhead() -> str:
    """results/overhead_cpu.json: this branch against its base commit, interleaved in one process."""
    d = _load("overhead_cpu.json")
    what = {
        "sort": "sorting step (length 2048: 64 segments of 32, d 64)",
        "lm": "Shakespeare LM step (d 128, seg 128)",
    }
    ci = lambda r: f"{r['mean']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"  # noqa: E731
    rounds = len(next(iter(d["sort"]["steps"].values()))["cpu_ms_all"])
    lines = [
        f"Base {d['base']} against {d['sort'].get('new', d['new'])}, fp32, {rounds} rounds; ms = median process CPU ms per step, "
        "ratios = mean [95% CI] over rounds. Machine: " + _machine(d["machine"]) + ".",
        "",
        "| what | model | base ms | new ms | speedup | ∞-former / XL tokens/s: base | new |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    compiled = []
    for task in ("sort", "lm"):
        r = d[task]
        pr = r["per_round"]
        for n in sorted({k.split("/")[1] for k in r["steps"]}):
            base, new = r["steps"][f"{task}/{n}/base"]["cpu_ms"], r["steps"][f"{task}/{n}/new"]["cpu_ms"]
            ratio = pr["infinite_over_xl_tokens_per_s"]
            cells = f"{ci(ratio['base'])} | {ci(ratio['new'])}" if n.startswith("infinite") else " | "
            lines.append(
                f"| {what[task]} | {n} | {base:.0f} | {new:.0f} | {ci(pr['speedup_over_base'][n])} | {cells} |"
            )
            if "compiled_over_eager" in pr:
                ms = r["steps"][f"{task}/{n}/compiled"]["cpu_ms"]
                compiled.append(
                    f"| {what[task]} | {n} | {new:.0f} | {ms:.0f} | {ci(pr['compiled_over_eager'][n])} |"
                )
        if "compiled_over_eager" in pr:
            compiled.append(
                f"| {what[task]} | ∞-former / XL tokens/s | both eager {ci(pr['infinite_over_xl_tokens_per_s']['new'])} "
                f"| both compiled {ci(pr['infinite_over_xl_tokens_per_s']['compiled'])} | ∞-former compiled / "
                f"XL eager {ci(pr['infinite_compiled_over_xl_eager'])} |"
            )
    if compiled:
        lines += [
            "",
            "The same rounds, this checkout compiled (`torch.compile(model, dynamic=False)`, as `--compile` runs it):",
            "",
            "| what | model | eager ms | compiled ms | compiled speedup |",
            "|---|---|---:|---:|---:|",
            *compiled,
        ]
    if "breakdown" in d:
        r = d["breakdown"]
        lines += [
            "",
            f"Where the time goes: {r['what']} (`{r['command']}`).",
            "",
            "| piece | µs |",
            "|---|---:|",
        ]
        lines += [f"| {k} | {v:,.0f} |" for k, v in r["cpu_us"].items()]
    if "layer" in d:
        r = d["layer"]
        ms = {k: v["cpu_ms"] for k, v in r["steps"].items()}
        pr = r["per_round"]
        lines += [
            "",
            f"LTM layer fwd+bwd (batch 8, e 512, N = M = L = 512; {len(r['steps']['plain']['cpu_ms_all'])} rounds, "
            f"base against {r.get('new', d['new'])}): base {ms['ltm/base']:.0f} ms, new "
            f"{ms['ltm/new']:.0f} ms, speedup {ci(pr['speedup_over_base'])}; LTM / plain attention over N keys "
            f"({ms['plain']:.0f} ms): base {ci(pr['ltm_over_plain']['base'])}, new {ci(pr['ltm_over_plain']['new'])}.",
        ]
    return "\n".join(lines)


def compile_training() -> str:
    """results/compile_cpu.json's training steps: eager vs torch.compile(model)."""
    d = _load("compile_cpu.json")
    lines = [
        "Machine: " + _machine(d["machine"]) + ". Median process CPU ms per step, interleaved after "
        "compilation; compile time = the first 3 compiled steps (compilation and recompiles), wall seconds.",
        "",
        "| step | model | precision | eager ms | compiled ms | speedup | compile s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for task in ("sort", "lm", "layer"):
        for name, r in d.get(task, {}).items():
            if not isinstance(r, dict) or "eager_cpu_ms" not in r:
                continue
            parts = name.split("/")
            model, prec = (parts[1], parts[2]) if len(parts) == 3 else ("LTM layer", parts[1])
            lines.append(
                f"| {task} | {model} | {prec} | {r['eager_cpu_ms']:.0f} | {r['compiled_cpu_ms']:.0f} | "
                f"{r['speedup']:.2f}× | {r['compile_wall_s']:.0f} |"
            )
    for task in ("sort", "lm"):
        shapes = d.get(task, {}).get("shapes")
        for key, r in d.get(task, {}).items():
            if key.startswith("infinite_over_xl/"):
                cross = r.get("infinite_compiled_over_xl_eager")
                lines.append("")
                lines.append(
                    f"{task}, {key.split('/')[1]}: ∞-former / XL tokens/s {r['eager']:.2f} eager, "
                    f"{r['compiled']:.2f} both compiled"
                    + (f", {cross:.2f} ∞-former compiled / XL eager" if cross is not None else "")
                    + (f" (compiled with {shapes} shapes)." if shapes else ".")
                )
    return "\n".join(lines)


def sort_compile() -> str:
    """results/sort_compile_cpu.json: `infinite-former sort` with and without --compile, end to end."""
    d = _load("sort_compile_cpu.json")
    lines = [
        f"Machine: {_machine(d['machine'])}; {d['note']}.",
        "",
        "| setting | model | eager: training s | compiled: training s (compilation included) | "
        "eager: last half of the steps, s | compiled: last half, s | inductor cache |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for setting in ("default", "long"):
        if setting not in d:
            continue
        r = d[setting]
        for m, e in r["eager"]["models"].items():
            c = r["compiled"]["models"][m]
            lines.append(
                f"| `{r['compiled']['command']}` | {LABELS[m]} | {e['train_seconds']:.0f} | {c['train_seconds']:.0f} | "
                f"{e['last_half_wall_seconds']:.0f} | {c['last_half_wall_seconds']:.0f} | {r['inductor_cache']} |"
            )
    return "\n".join(lines)


MEMORY_LABELS = memory_labels()  # each memory type's own label (models/<type>.py)
XL = MEMORY_LABELS["xl"]
LABELS = {**MEMORY_LABELS, "xl_params": f"{XL}, parameter-matched"}


def _ci(p: dict, digits: int = 3) -> str:
    lo, hi = p["ci95"]
    return f"{p['mean_diff']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _verdict(p: dict, labels: dict[str, str] = LABELS) -> str:
    v = p["verdict"]
    return "within noise" if v == "within noise" else f"**{labels.get(v[:-7], v[:-7])} better**"


def _pair_rows(pairs: list[dict], labels: dict[str, str] = LABELS) -> list[str]:
    """One table row per paired comparison: a − b | difference [95% CI] | verdict."""
    return [f"| {labels[p['a']]} − {labels[p['b']]} | {_ci(p, 4)} | {_verdict(p, labels)} |" for p in pairs]


def sorting() -> str:
    d = _load("sorting_cpu.json")
    c = d["config"]
    lengths = [str(n) for n in c["lengths"]]
    budget = c["memory_budget"]
    models = d["models"]
    status = (
        "all seeds done"
        if d["complete"]
        else "PARTIAL: seeds done per model: "
        + ", ".join(f"{LABELS[m]} {v['seeds']}" for m, v in models.items())
    )
    tput_record = d.get("throughput") or {}
    tput = tput_record.get("tokens_per_s", {})
    tput_note = (
        f" Training tokens/s: {tput_record['setup']}, every segment back-propagated; machine: "
        + _machine(tput_record["machine"])
        + "."
        if tput
        else ""
    )
    lines = [
        f"{c['num_symbols']} symbols, lengths {', '.join(lengths)}, segment {c['segment_len']}; "
        f"{c['n_layers']} layers, d {c['d_model']}; {c['steps']} steps of batch {c['batch_size']} per model, "
        f"lr {c['lr']}. Memory per layer: XL {budget['xl']['mem_len']} states (a window of "
        f"{c['xl_window_tokens']} tokens); compressive {budget['compressive']['mem_len']} + "
        f"{budget['compressive']['cmem_len']} compressed; ∞-former {budget['infinite']['mem_len']} + N = "
        f"{budget['infinite']['num_basis']}. Answer accuracy on {c['eval_sequences']} held-out sequences "
        f"per length, mean ± std over seeds ({status}). Machine: " + _machine(d["machine"]) + "." + tput_note,
        "",
        "| model | parameters | "
        + " | ".join(f"length {n}" for n in lengths)
        + " | training loss, step 500 → 1000 | training tokens/s |",
        "|---|---:|" + "---:|" * (len(lengths) + 2),
    ]
    for m, v in models.items():
        cells = [f"{v['accuracy'][n]['mean']:.3f} ± {v['accuracy'][n]['std']:.3f}" for n in lengths]
        curve = dict((int(s), x) for s, x in v["loss_curve_mean"])
        loss = f"{curve[500]:.2f} → {curve[c['steps']]:.2f}" if 500 in curve and c["steps"] in curve else "–"
        lines.append(
            f"| {LABELS[m]} | {v['num_parameters']:,} | "
            + " | ".join(cells)
            + f" | {loss} | {_fmt(tput.get(m), 0)} |"
        )
    ref = d["reference_accuracy"]
    key = f"last_{c['xl_window_tokens']}_token_counts"
    lines.append(
        f"| *rule: rank by the counts of the last {c['xl_window_tokens']} tokens* | | "
        + " | ".join(f"{ref[n][key]:.3f}" for n in lengths)
        + " | | |"
    )
    longest = lengths[-1]
    wiped = [m for m in ("infinite", "infinite_sticky") if m in models]
    if wiped:
        lines += [
            "",
            f"Long-term memory emptied just before the answer segment, length {longest}, per seed:",
            "",
        ]
        lines += ["| model | intact | memory emptied |", "|---|---|---|"]
        for m in wiped:
            intact = ", ".join(f"{x:.3f}" for x in models[m]["accuracy"][longest]["seeds"])
            empty = ", ".join(f"{x:.3f}" for x in models[m]["ltm_wiped_accuracy_at_longest"])
            lines.append(f"| {LABELS[m]} | {intact} | {empty} |")
    return "\n".join(lines)


def sorting_claim() -> str:
    """Paired comparisons at every length: mean difference in accuracy, 95% CI, seeds won."""
    d = _load("sorting_cpu.json")
    pairs = d["pairs"]
    if not pairs:
        return "No paired comparison yet: no seed is finished for both models of a pair."
    lines = [
        f"Paired by seed and test sequence (seeds {d['paired_seeds']}): mean difference in answer accuracy "
        "(first − second model), bootstrap 95% CI over seeds × sequences, and the seeds in which the first "
        "model's mean is higher.",
        "",
        "| comparison | " + " | ".join(f"length {n}" for n in d["config"]["lengths"]) + " |",
        "|---|" + "---|" * len(d["config"]["lengths"]),
    ]
    by_pair: dict[tuple[str, str], dict[int, dict]] = {}
    for p in pairs:
        by_pair.setdefault((p["a"], p["b"]), {})[p["length"]] = p
    for (a, b), by_len in by_pair.items():
        cells = [
            f"{_ci(p)}, {_verdict(p)}, {p['seeds_won']}/{p['seeds']} seeds"
            for p in (by_len[n] for n in d["config"]["lengths"])
        ]
        lines.append(f"| {LABELS[a]} − {LABELS[b]} | " + " | ".join(cells) + " |")
    longest = str(d["config"]["lengths"][-1])
    models = d["models"]
    base = [b for b in ("xl", "compressive") if b in models]
    for inf in ("infinite", "infinite_sticky"):
        if inf not in models or not base or not d["paired_seeds"]:
            continue
        acc = {
            m: dict(zip(models[m]["seeds"], models[m]["accuracy"][longest]["seeds"])) for m in (inf, *base)
        }
        wins = sum(all(acc[inf][k] > acc[b][k] for b in base) for k in d["paired_seeds"])
        lines.append(
            f"\n{LABELS[inf]} at length {longest}: above both of the paper's baselines ("
            + " and ".join(LABELS[b] for b in base)
            + f") in {wins} of {len(d['paired_seeds'])} seeds (mean accuracy per seed)."
        )
    return "\n".join(lines)


def sorting_budget(name: str = "sorting_budget_cpu.json") -> str:
    """A sorting seed retrained for more steps (benchmarks/sorting_budget.py)."""
    d = _load(name)
    runs = d["runs"]
    s = next(iter(d["settings"].values()))
    lengths = [str(n) for n in s["lengths"]]
    lines = [
        f"Seed {s['seed']}, {s['num_symbols']} symbols, lengths {', '.join(lengths)}, batch {s['batch_size']}, "
        f"lr {s['lr']}. Machine: " + _machine(d["machine"]) + ".",
        "",
        "| model | steps | "
        + " | ".join(f"test accuracy, length {n}" for n in lengths)
        + " | final training loss |",
        "|---|---:|" + "---:|" * (len(lengths) + 1),
    ]
    for r in runs.values():
        cells = " | ".join(f"{r['test_accuracy'][n]:.3f}" for n in lengths)
        lines.append(f"| {LABELS[r['model']]} | {r['steps']} | {cells} | {r['final_train_loss']:.3f} |")
    return "\n".join(lines)


def lm_shakespeare() -> str:
    """The first LM benchmark: 600 steps, 2 seeds (kept; the 3000-step benchmark replaces it)."""
    runs = [_load("lm_shakespeare_600steps_cpu.json"), _load("lm_shakespeare_600steps_cpu_seed1.json")]
    use = _load("lm_shakespeare_600steps_cpu_memory_use.json")["models"]
    pairs = _load("lm_shakespeare_600steps_cpu_pairs.json")
    c = runs[0]["config"]
    mem = c["memory"]
    seeds = " / ".join(str(r["config"]["seed"]) for r in runs)
    lines = [
        f"{c['tokenizer']}; {c['n_layers']} layers, d {c['d_model']}, {c['steps']} steps × {c['batch_size']} "
        f"lanes × {c['seg_len']} tokens per model ({c['tokens_per_model']:,} tokens); memory per layer: XL "
        f"{mem['xl']['mem_len']}, compressive {mem['compressive']['mem_len']} + {mem['compressive']['cmem_len']}, "
        f"∞-former {mem['infinite']['mem_len']} + N = {mem['infinite']['num_basis']}; LTM init: "
        f"{c['ltm_init']}. Test split ({len(pairs['documents'])} plays). Machine: "
        + _machine(runs[0]["machine"])
        + ".",
        "",
        f"| model | parameters (memory part) | test perplexity, seed {seeds} | bits per byte, seed {seeds} "
        "| perplexity, only the last 128 states kept (seed 0) |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in runs[0]["models"]:
        ppl = " / ".join(f"{r['models'][m]['test_ppl']:.2f}" for r in runs)
        bpb = " / ".join(f"{r['models'][m]['test_bpb']:.3f}" for r in runs)
        short = use.get(m, {}).get("test_ppl_short_term_only")
        params = _params(use.get(m, {}).get("num_parameters") or runs[0]["models"][m]["parameters"])
        lines.append(f"| {LABELS[m]} | {params} | {ppl} | {bpb} | {_fmt(short, 2)} |")
    lines += [
        "",
        f"Paired by seed and play (`python benchmarks/lm_pairs.py`): difference in log perplexity, nats per "
        f"token (negative: the first model is better), bootstrap 95% CI over {len(pairs['seeds'])} seeds × "
        f"{len(pairs['documents'])} plays (few units: the CIs are rough).",
        "",
        "| comparison | difference [95% CI] | verdict |",
        "|---|---:|---|",
    ]
    lines += _pair_rows(pairs["pairs"])
    return "\n".join(lines)


LM_VARIANTS = {
    "xl_equal": f"{XL}, m + N states",
    "xl_stm": f"{XL}, m states",
    "xl_params": f"{XL}, m + N states, parameter-matched",
    **MEMORY_LABELS,
}


def lm_shakespeare_3000() -> str:
    """The 3000-step LM benchmark: both memory conventions, paired CIs, interleaved throughput."""
    d = _load("lm_shakespeare_cpu.json")
    s = d["settings"]
    lines = [
        f"{s['tokenizer']}; {s['n_layers']} layers, d {s['d_model']}, {s['steps']} steps × {s['batch_size']} lanes "
        f"× {s['seg_len']} tokens per model; m = {s['mem_len']}, N = {s['num_basis']}; LTM init: {s['ltm_init']}; "
        f"parameter-matched XL: d_inner {s['xl_params_d_inner']}. Test split."
        + ("" if d["complete"] else " PARTIAL: not every variant has every seed."),
        "",
    ]
    for conv, c in d["conventions"].items():
        if not c["models"]:
            lines += [f"*{conv}*: no run finished yet.", ""]
            continue
        lines += [
            f"*{conv}* (paired seeds {c['paired_seeds']}):",
            "",
            "| model | parameters | test perplexity (mean) | per seed | bits per byte |",
            "|---|---:|---:|---|---:|",
        ]
        for m in c["models"].values():
            per = ", ".join(f"{x['test_ppl']:.2f}" for x in m["seeds"])
            lines.append(
                f"| {LM_VARIANTS[m['variant']]} | {m['parameters']:,} | {m['test_ppl']:.2f} | {per} | {m['test_bpb']:.3f} |"
            )
        if c["pairs"]:
            lines += [
                "",
                "| comparison (log perplexity, nats/token) | difference [95% CI] | verdict |",
                "|---|---:|---|",
            ]
            lines += _pair_rows(c["pairs"])
        lines.append("")
    tput = d.get("throughput")
    if tput:
        lines += [
            f"Training tokens/s, {tput['setup']}, machine: " + _machine(tput["machine"]) + ":",
            "",
            "| model | tokens/s |",
            "|---|---:|",
        ]
        lines += [f"| {LM_VARIANTS[v]} | {x:,.0f} |" for v, x in tput["tokens_per_s"].items()]
    return "\n".join(lines).rstrip()


def sort_default() -> str:
    d = _load("sort_default_cpu.json")
    lengths = [str(n) for n in d["settings"]["lengths"]]
    minutes, seconds = divmod(round(d["total_seconds"]), 60)
    lines = [
        f"`infinite-former sort` with no flags: {minutes} min {seconds:02d} s wall clock in all (both models "
        "trained side by side, then tested). Machine: " + _machine(d["machine"]) + ".",
        "",
        "| model | " + " | ".join(f"length {n}" for n in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for m, acc in d["accuracy"].items():
        lines.append(f"| {LABELS[m]} | " + " | ".join(f"{acc[n]:.3f}" for n in lengths) + " |")
    return "\n".join(lines)


DIALOGUE_LABELS = {
    "no_memory": "same model, no memory",
    "infinite": MEMORY_LABELS["infinite"],
    "infinite_sticky": MEMORY_LABELS["infinite_sticky"],
}


def dialogue() -> str:
    d = _load("dialogue_cpu.json")
    s = d["settings"]
    test = s["counts"]["test"]
    replies = next(iter(d["runs"].values()))["replies"]
    lines = [
        f"GPT-2 config trained from scratch: {s['n_layer']} layers, d {s['n_embd']}, {s['n_head']} heads, block "
        f"L = {s['block_size']}, BPE vocabulary {s['vocab_size']}; memory N = M = {s['num_basis']}; "
        f"{s['steps']} steps (one reply each) per model, lr {s['lr']:g}, seed {s['seed']}. Documents: the last "
        f"{s['max_document_chars']:,} characters of the play before the scene; dialogues: the first "
        f"{s['max_turns']} speeches of each scene. Test: {replies} replies ({s['eval_replies']} per scene) of "
        f"{test['dialogues']} scenes in the test plays; nucleus sampling, top-p 0.9, ≤ 50 tokens. "
        f"{d['total_seconds'] / 60:.0f} minutes in all. Machine: " + _machine(d["machine"]) + ".",
        "",
        "| model | parameters | F1 | ROUGE-1 | ROUGE-L | METEOR | reply perplexity |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in d["models"].items():
        cells = [_fmt(m[k], 2) for k in ("f1", "rouge1", "rougeL", "meteor", "reply_ppl")]
        params = f"{m['parameters']:,}" if "parameters" in m else "–"
        lines.append(f"| {DIALOGUE_LABELS[name]} | {params} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Paired over the {test['dialogues']} test scenes (bootstrap 95% CI of the mean per-scene difference "
        "a − b; log perplexity: lower is better):",
        "",
        "| a vs b | metric | mean difference | 95% CI | verdict |",
        "|---|---|---:|---:|---|",
    ]
    for p in d["pairs"]:
        verdict = p["verdict"]
        for key, label in DIALOGUE_LABELS.items():
            verdict = verdict.replace(f"{key} better", f"{label} better")
        lo, hi = p["ci95"]
        lines.append(
            f"| {DIALOGUE_LABELS[p['a']]} vs {DIALOGUE_LABELS[p['b']]} | {p['metric']} | {p['mean_diff']:+.3f} "
            f"| [{lo:+.3f}, {hi:+.3f}] | {verdict} |"
        )
    return "\n".join(lines)


PRETRAINED_DIALOGUE_LABELS = {  # every model: the same pretrained GPT-2, fine-tuned by the same recipe
    "no_memory": "no memory",
    "infinite": "∞-former (uniform)",
    "infinite_sticky": "∞-former (sticky)",
    "training_free": "training-free memory",
    "free_at_eval": "no memory + training-free memory at evaluation only",
}
METRIC_LABELS = {"f1": "F1", "rouge1": "ROUGE-1", "rougeL": "ROUGE-L", "meteor": "METEOR",
                 "log_reply_ppl": "log reply perplexity"}  # fmt: skip


def dialogue_pretrained(path: Path | None = None) -> str:
    """The paper's dialogue recipe on the GPT-2 pretrained here (benchmarks/dialogue_pretrained.py)."""
    d = json.loads((path or RESULTS / "dialogue_pretrained_cpu.json").read_text(encoding="utf-8"))
    s, docs, labels = d["settings"], d["documents"], PRETRAINED_DIALOGUE_LABELS
    b = d["base_model"]
    base = "–" if b is None else (
        f"{b['config']['n_layer']} layers, d {b['config']['n_embd']}, context {b['config']['n_positions']}, "
        f"{b['parameters']:,} parameters"
    )  # fmt: skip
    dt = docs["document_tokens"]
    lines = [
        f"Base model: the GPT-2 pretrained here on the training plays ({base}). Fine-tuning "
        f"(`infinite-former dialogue train --model`): block L = {s['block_size']}, {s['steps']} steps of one "
        f"reply each (of {s['counts']['train']['replies']:,} training replies), AdamW {s['lr']:g} (memory "
        f"weights {s['ltm_lr']:g}), N = M = {s['num_basis']}, τ = {s['tau']}, KL weight {s['kl_weight']:g}. "
        f"Documents: the last {s['max_document_chars']:,} characters of the play before the scene, "
        f"{dt['mean']:.0f} tokens on average (min {dt['min']}, max {dt['max']}), "
        f"{docs['document_blocks_mean']:.1f} blocks; longer than one block for "
        f"{100 * docs['longer_than_one_block']:.0f}% of the test replies. Test: {docs['replies']} replies "
        f"({s['eval_replies']} per scene) of {s['counts']['test']['dialogues']} scenes; nucleus sampling, "
        f"top-p {s['top_p']}, ≤ {s['max_new_tokens']} tokens. Seeds {d['paired_seeds']}."
        + ("" if d["complete"] else " PARTIAL: not every model has every seed.")
        + (f" Cut to fit the CPU: {s['cut']}." if s.get("cut") else "")
        + " Machine: "
        + _machine(d["machine"])
        + ".",
        "",
        "| model (all fine-tuned from the same GPT-2) | parameters (memory part) | F1 | ROUGE-1 | ROUGE-L "
        "| METEOR | reply perplexity |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in d["models"].items():
        cells = " | ".join(_fmt(m[k], 2) for k in ("f1", "rouge1", "rougeL", "meteor", "reply_ppl"))
        params = f"{m['parameters']:,}" + (
            f" ({m['memory_parameters']:,})" if "memory_parameters" in m else ""
        )
        lines.append(f"| {labels[name]} | {params} | {cells} |")
    lines += [
        "",
        "| comparison (paired by seed and test scene) | metric | difference [95% CI] | verdict |",
        "|---|---|---:|---|",
    ]
    for p in d["pairs"]:
        digits = 3 if p["metric"] == "log_reply_ppl" else 2
        lines.append(
            f"| {labels[p['a']]} − {labels[p['b']]} | {METRIC_LABELS[p['metric']]} | {_ci(p, digits)} "
            f"| {_verdict(p, labels)} |"
        )
    return "\n".join(lines)


GPT2_LABELS = {
    "base": "pretrained, not fine-tuned",
    "no_memory": "fine-tuned, no memory",
    "infinite": "fine-tuned + memory (uniform sampling)",
    "infinite_sticky": "fine-tuned + memory (sticky)",
    "no_memory_window": "control: fine-tuned, no memory, previous block in the window",
    "infinite_wiped": "control: fine-tuned + memory (uniform), memory emptied every block",
    "infinite_sticky_wiped": "control: fine-tuned + memory (sticky), memory emptied every block",
    "base_window": "control: pretrained, not fine-tuned, previous block in the window",
}


def gpt2_finetune() -> str:
    """The paper's GPT-2 experiment on a GPT-2 pretrained here (benchmarks/gpt2_finetune.py)."""
    d = _load("gpt2_finetune_cpu.json")
    s, b = d["settings"], d["base_model"]
    c = b["config"]
    lines = [
        f"Base model: GPT-2 pretrained here on the training plays (`benchmarks/pretrain.py`): "
        f"{c['n_layer']} layers, d {c['n_embd']}, context {c['n_positions']}, {b['parameters']:,} parameters, "
        f"{c['steps']} steps of {c['batch_size']} × {c['n_positions']} tokens ({b['train_seconds'] / 60:.0f} min). "
        f"Fine-tuning (`infinite-former lm finetune`): blocks of L = {s['block_size']} tokens, "
        f"{s['batch_size']} lanes, {s['steps']} steps, AdamW {s['lr']:g} (memory weights {s['ltm_lr']:g}), "
        f"N = M = {s['num_basis']}, τ = {s['tau']}, KL weight {s['kl_weight']:g}. Test plays, every block "
        f"scored once; the models without memory read each block alone. Seeds {d['paired_seeds']}."
        + ("" if d["complete"] else " PARTIAL: not every model has every seed.")
        + " Machine: "
        + _machine(d["machine"])
        + ".",
        "",
        "| model | parameters (memory part) | test perplexity (mean) | per seed | bits per byte |",
        "|---|---:|---:|---|---:|",
    ]
    for name, m in d["models"].items():
        per = ", ".join(f"{x['test_ppl']:.2f}" for x in m.get("seeds", [])) or "–"
        params = _params(m["num_parameters"])
        lines.append(
            f"| {GPT2_LABELS[name]} | {params} | {m['test_ppl']:.2f} | {per} | {m['test_bpb']:.3f} |"
        )
    lines += [
        "",
        "| comparison (log perplexity, nats/token, paired by seed and test play) | difference [95% CI] | verdict |",
        "|---|---:|---|",
    ]
    lines += _pair_rows(d["pairs"], GPT2_LABELS)
    pk = d["passkey_accuracy"]
    dists = list(next(iter(pk.values())))
    lines += [
        "",
        f"Passkey retrieval (greedy, {s['passkey']['trials']} passkeys per distance and seed; distance = filler "
        "tokens between the passkey and the question; accuracy):",
        "",
        "| model | " + " | ".join(f"distance {x}" for x in dists) + " |",
        "|---|" + "---:|" * len(dists),
    ]
    for name, acc in pk.items():
        label = GPT2_LABELS.get(name, name)
        lines.append(f"| {label} | " + " | ".join(f"{acc[x]:.2f}" for x in dists) + " |")
    return "\n".join(lines)


INSPECT_LABELS = {
    "lm": f"LM from scratch (3000-step benchmark), {MEMORY_LABELS['infinite_sticky']}, seed 0",
    "lm_infinite": f"LM from scratch (3000-step benchmark), {MEMORY_LABELS['infinite']}, seed 0, re-run",
    "lm_reach": "LM from scratch (3000-step benchmark), ∞-former, uniform_time + auto widths, seed 0",
    "gpt2": "GPT-2 pretrained here + memory (sticky), fine-tuned, seed 0",
}


def inspect_memory() -> str:
    """What the benchmarks' memories hold (benchmarks/inspect_memory.py): per layer, where the
    queries look and how much of a stored vector can be recovered, by age."""
    lines = [
        "| model | layer | tokens read | median attention age | attention outside [0, 1] "
        "| reconstruction error, 1k tokens ago | 10k tokens ago | mean vector (any age) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    machines: dict[str, list[str]] = {}  # machine -> the models inspected on it
    for name, label in INSPECT_LABELS.items():
        path = RESULTS / "inspect" / name / "inspect.json"
        if not path.is_file():
            continue
        d = json.loads(path.read_text(encoding="utf-8"))
        machines.setdefault(_machine(d["machine"]), []).append(label)
        for layer in d["layers"]:
            rec = layer["reconstruction"]
            at = {k: v["relative_error"] for k, v in rec["at_age"].items()}
            lines.append(
                f"| {label} | {layer['layer']} | {d['tokens']:,} | {_fmt(layer['median_attention_age'], 0)} "
                f"| {layer['attention_share_outside_0_1']:.0%} | {_fmt(at['1000'], 3)} | {_fmt(at['10000'], 3)} "
                f"| {rec['baseline_mean_vector']:.3f} |"
            )
    if len(machines) > 1:
        lines += ["", "Machines: " + "; ".join(f"{m} ({', '.join(ls)})" for m, ls in machines.items()) + "."]
    else:
        lines += ["", f"Machine: {next(iter(machines))}." if machines else "No inspection has run yet."]
    return "\n".join(lines)


REACH_AGES = (0, 4, 8, 10, 12, 13)  # age bins shown: 0-2, 16-32, 256-512, 1k-2k, 4k-8k, 8k-16k tokens ago


def reach() -> str:
    d = _load("reach_cpu.json")
    edges = d["age_bin_edges"]
    rows = [
        r
        for r in d["rows"]
        if r["num_basis"] == 512 and r["sampling"] == "uniform" and r["widths"].endswith("(auto)")
    ]
    ages = [f"{edges[i]:,.0f}–{edges[i + 1]:,.0f}" for i in REACH_AGES]
    lines = [
        f'N = M = L = 512, widths {{1, 2.5}}/N (`widths="auto"`), uniform samples; {d["num_tokens"]:,} '
        f"tokens absorbed. Mean relative error of a token read back, by age (tokens ago); 1 = giving "
        f"back zero. Machine: {_machine(d['machine'])}.",
        "",
        "| signal | schedule | " + " | ".join(ages) + " |",
        "|---|---|" + "---:|" * len(ages),
    ]
    for r in rows:
        cells = " | ".join(f"{r['error_by_age'][i]:.2f}" for i in REACH_AGES)
        lines.append(f"| {r['signal']} | {r['schedule']} | {cells} |")
    return "\n".join(lines)


def recall() -> str:
    d = _load("recall_cpu.json")
    c = d["config"]
    models = [*c["variants"], *c["ablations"]]
    lines = [
        f"Trained on D ∈ {{{', '.join(map(str, c['train_distances']))}}}, tested at D = "
        f"{', '.join(f'{x:,}' for x in c['test_distances'])}; {c['settings']['steps']} steps, "
        f"{len(d['tasks'][next(iter(d['tasks']))]['models']['xl']['seeds'])} seeds. Answer accuracy on held-out "
        f"sequences, mean over seeds; ↑ / ↓: the 95% CI of (accuracy − chance) is above / below 0. "
        f"Machine: {_machine(d['machine'])}.",
        "",
        "| task | model | " + " | ".join(f"D = {x:,}" for x in c["test_distances"]) + " |",
        "|---|---|" + "---:|" * len(c["test_distances"]),
    ]
    for task, t in d["tasks"].items():
        for v in models:
            if v not in t["models"]:
                continue
            cells = []
            for dist in c["test_distances"]:
                p = next(x for x in t["vs_chance"] if x["model"] == v and x["distance"] == dist)
                mark = {f"{v} better": " ↑", "chance better": " ↓"}.get(p["verdict"], "")
                cells.append(f"{t['models'][v]['accuracy'][str(dist)]['mean']:.3f}{mark}")
            lines.append(f"| {task} (chance {t['chance_accuracy']:.3f}) | {v} | " + " | ".join(cells) + " |")
    lines += [
        "",
        'Paired by seed (gist): the ∞-former with `schedule="uniform_time"`, `widths="auto"` '
        "(infinite_reach) against each other model, and auto widths alone against the paper's ∞-former.",
        "",
        "| D | pair | difference [95% CI] | verdict |",
        "|---:|---|---|---|",
    ]
    shown = [p for p in d["pairs"] if p["task"] == "gist" and p["distance"] in (256, 1024)]
    for p in shown:
        if p["a"] == "infinite_reach" or (p["a"], p["b"]) == ("infinite_auto_widths", "infinite"):
            lines.append(f"| {p['distance']:,} | {p['a']} − {p['b']} | {_ci(p)} | {p['verdict']} |")
    return "\n".join(lines)


def sorting_reach() -> str:
    """Issue 18's carry-back: the ∞-former with the recall benchmark's LTM options on sorting."""
    d = _load("sorting_reach_cpu.json")
    labels = {**LABELS, "infinite_reach": "∞-former, uniform_time + auto widths"}
    lengths = [str(n) for n in d["models"]["infinite_reach"]["accuracy"]]
    lines = [
        f"{d['config']['variant']}; seeds {d['seeds']}, paired with the sorting benchmark's records of the "
        f"same seeds and test sequences. Machine: " + _machine(d["machine"]) + ".",
        "",
        "| model | parameters | " + " | ".join(f"accuracy at {n}" for n in lengths) + " |",
        "|---|---:|" + "---:|" * len(lengths),
    ]
    for name, m in d["models"].items():
        accs = " | ".join(f"{m['accuracy'][n]:.3f}" for n in lengths)
        lines.append(f"| {labels[name]} | {m['num_parameters']:,} | {accs} |")
    for length in (int(lengths[0]), int(lengths[-1])):
        lines += [
            "",
            f"| comparison at {length} (accuracy, paired by seed and test sequence) | difference [95% CI] | verdict |",
            "|---|---:|---|",
            *_pair_rows([p for p in d["pairs"] if p["length"] == length], labels),
        ]
    return "\n".join(lines)


def _free_label(name: str) -> str:
    """free_gibbs_a0.5 -> "training-free, Gibbs, α = 0.5"; free_gaussian_softmax -> "..., one softmax"."""
    if name in FREE_LABELS or not name.startswith("free_"):
        return FREE_LABELS.get(name, name)
    density, how = name.removeprefix("free_").split("_", 1)
    combine = "one softmax" if how == "softmax" else f"α = {how.removeprefix('a')}"
    return f"training-free, {density.capitalize()}, {combine}"


FREE_LABELS = {
    "base": "pretrained, each block alone",
    "window": "pretrained, previous block in the window",
    "memory_zero": "+ memory, output projection 0 (untrained)",
    "free": "from the training-free memory (Gibbs, α = 0.5)",
    "zero": "from the zero-initialised memory",
    "no_memory": "without memory",
    "no_memory_ft": "fine-tuned without memory (seed 0), whole prompt in its window",
    "memory_ft": "fine-tuned with memory from zero (seed 0)",
    "free_ft": "fine-tuned from the training-free memory (seed 0)",
}


def _bucket_table(buckets: list[dict], key: str, labels: dict[str, str]) -> list[str]:
    """Rows: models; columns: the buckets of ``key`` (blocks: block index, offsets: offset in the block)."""
    buckets = [p for p in buckets if key in p]
    spans = list(dict.fromkeys(tuple(p[key]) for p in buckets))

    def head(lo: int, hi: int) -> str:
        if key == "offsets":
            return f"offsets {lo}–{hi - 1}"
        return (
            f"block {lo}" if hi - lo == 1 else (f"blocks {lo}+" if hi >= 10**8 else f"blocks {lo}–{hi - 1}")
        )

    lines = ["| − pretrained, each block alone | " + " | ".join(head(*sp) for sp in spans) + " |",
             "|---|" + "---:|" * len(spans)]  # fmt: skip
    for name in dict.fromkeys(p["a"] for p in buckets):
        cells = {tuple(p[key]): p for p in buckets if p["a"] == name}
        row = [_ci(cells[sp], 4) + ("" if cells[sp]["verdict"] == "within noise" else " *") for sp in spans]
        lines.append(f"| {labels[name]} | " + " | ".join(row) + " |")
    return lines


def training_free(model_type: str = "gpt2") -> str:
    """The training-free memory on a model pretrained here (benchmarks/training_free.py)."""
    d = _load(f"training_free_{model_type}_cpu.json")
    m = d["memory"]
    labels = {name: _free_label(name) for name in d["models"]}
    lines = [
        f"Model: `{Path(d['model']).name}` ({d['model_type']}); {d['evaluation']}, {d['tokens']:,} scored tokens. "
        f"Memory: N = M = {m['num_basis']}, τ = {m['tau']}, blocks of L = {m['block_size']}, "
        f"sticky = {m['sticky']}; no weight trained. Machine: " + _machine(d["machine"]) + ".",
        "",
        "| model | parameters (memory part) | test NLL (nats/token) | perplexity |",
        "|---|---:|---:|---:|",
    ]
    for name, r in d["models"].items():
        nll = r["nll_per_token"]
        lines.append(f"| {labels[name]} | {_params(r['num_parameters'])} | {nll:.4f} | {math.exp(nll):.2f} |")
    lines += [
        "",
        "| comparison (mean NLL of a test block, paired by block) | difference [95% CI] | verdict |",
        "|---|---:|---|",
        *_pair_rows(d["pairs"], labels),
        "",
        "Per block index in its document (block 0: the memory is empty) and per target offset inside its "
        "block, against the model without memory:",
        "",
        *_bucket_table(d["buckets"], "blocks", labels),
        "",
        *_bucket_table(d["buckets"], "offsets", labels),
    ]
    lines += ["", "(* : the 95% CI excludes 0.)"]
    return "\n".join(lines)


def training_free_finetune(model_type: str = "gpt2") -> str:
    """Fine-tuning from the training-free memory vs from the zero-initialised one (benchmarks/training_free_finetune.py)."""
    d = _load(f"training_free_finetune_{model_type}_cpu.json")
    s = d["settings"]
    steps = list(next(iter(d["valid_loss"].values())))
    lines = [
        f"Model: `{Path(d['model']).name}`; `lm finetune`, blocks of L = {s['block_size']}, {s['batch_size']} lanes, "
        f"{s['steps']} steps, AdamW {s['lr']:g} (new memory weights {s['ltm_lr']:g}), N = M = {s['num_basis']}, "
        f"τ = {s['tau']}; validation: the first {s['eval_segments_per_lane']} blocks of each lane of the "
        f"validation plays. Seeds {d['paired_seeds']}. Machine: " + _machine(d["machine"]) + ".",
        "",
        "| start | " + " | ".join(f"valid loss, step {t}" for t in steps) + " | test NLL at the end |",
        "|---|" + "---:|" * (len(steps) + 1),
    ]
    for name, curve in d["valid_loss"].items():
        row = " | ".join(f"{curve[t]:.4f}" for t in steps)
        lines.append(f"| {FREE_LABELS[name]} | {row} | {d['test_nll_per_token'][name]:.4f} |")
    labels = {k: FREE_LABELS[k] for k in d["valid_loss"]}
    lines += [
        "",
        "| comparison (validation loss, paired by seed) | step | difference [95% CI] | verdict |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {labels[p['a']]} − {labels[p['b']]} | {p['step']} | {_ci(p, 4)} | {_verdict(p, labels)} |"
              for p in d["valid_pairs"]]  # fmt: skip
    lines += [
        "",
        "| comparison (test NLL at the end, paired by seed and test play) | difference [95% CI] | verdict |",
        "|---|---:|---|",
        *_pair_rows(d["test_pairs"], labels),
    ]
    return "\n".join(lines)


def probes(model_type: str = "gpt2") -> str:
    """copy and passkey on a model pretrained here (benchmarks/probes.py)."""
    d = _load(f"probes_{model_type}_cpu.json")
    res = d["results"]

    def label(name: str) -> str:  # the plain models read the whole prompt in their window
        return "pretrained, whole prompt in its window" if name == "base" else _free_label(name)

    gaps = sorted({int(g) for r in res.values() for g in r["copy"].get("per_gap", {})})
    copy_cfg = next(r["copy"]["config"] for r in res.values() if "config" in r["copy"])
    lines = [
        f"Model: `{Path(d['model']).name}` ({d['model_type']}); memory blocks of L = {d['memory']['block_size']}, "
        f"N = M = {d['memory']['num_basis']}. copy: {copy_cfg['trials']} random spans of {copy_cfg['span']} tokens, "
        "NLL (nats/token) on the second copy after a gap D (– : beyond the model's positions; the first copy's "
        "NLL, averaged over the gaps every model takes, is the no-recall level). Machine: "
        + _machine(d["machine"])
        + ".",
        "",
        "| model | first copy | " + " | ".join(f"second copy, D = {g}" for g in gaps) + " |",
        "|---|---:|" + "---:|" * len(gaps),
    ]
    common = set.intersection(*(set(r["copy"].get("per_gap", {})) for r in res.values()))
    for name, r in res.items():
        per = r["copy"].get("per_gap", {})
        first = sum(per[g]["nll_first_copy"] for g in common) / max(
            len(common), 1
        )  # the gaps all models take
        cells = [f"{per[str(g)]['nll_second_copy']:.3f}" if str(g) in per else "–" for g in gaps]
        lines.append(f"| {label(name)} | {first:.3f} | " + " | ".join(cells) + " |")
    pk = max(
        (r["passkey"]["config"] for r in res.values() if "config" in r["passkey"]),
        key=lambda c: len(c["lengths"]),
    )
    lengths = [str(n) for n in pk["lengths"]]
    lines += [
        "",
        f"passkey (exact match, {pk['trials']} prompts per length and depth, depths {pk['depths']}):",
        "",
        "| model | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
        "|---|" + "---:|" * len(lengths),
    ]
    for name, r in res.items():
        by = r["passkey"].get("by_length", {})
        lines.append(
            f"| {label(name)} | " + " | ".join(f"{by[n]:.2f}" if n in by else "–" for n in lengths) + " |"
        )
    return "\n".join(lines)


def lm_reach() -> str:
    """Issue 18's carry-back to the 3000-step LM (benchmarks/lm_reach.py): paired with the committed
    records, with the references re-run on this machine, and how far the re-runs land from them."""
    d = _load("lm_reach_cpu.json")
    labels = {**LM_VARIANTS, "infinite_reach": "∞-former, uniform_time + auto widths"}
    f = d["fairness"]
    lines = [
        f"{d['config']['variant']}; seeds {d['seeds']}, test plays {', '.join(d['documents'])}. "
        f"Machine: {_machine(d['machine'])}; the committed records: {_machine(d['reference_machine'])}"
        + ("" if f["same_cpu_model"] else " (another CPU)")
        + f". Same tokens per play as those records: {'yes' if f['same_tokens_per_play'] else 'NO'}.",
        "",
        "| model | from | parameters | test perplexity (mean) | per seed | bits per byte |",
        "|---|---|---:|---:|---|---:|",
    ]
    for name, m in d["models"].items():
        per = ", ".join(f"{x['test_ppl']:.2f}" for x in m["seeds"])
        lines.append(
            f"| {labels[name]} | `{m['source']}` | {m['parameters']:,} | {m['test_ppl']:.2f} | {per} "
            f"| {m['test_bpb']:.3f} |"
        )
    head = "| comparison (log perplexity, nats/token) | seeds | difference [95% CI] | seeds won | verdict |"
    for what, title in (("pairs", "against the committed records"), ("pairs_rerun", "against the re-runs")):
        if d[what]:
            lines += ["", f"Paired by seed and play, {title}:", "", head, "|---|---|---:|---:|---|"]
            lines += [
                f"| {labels[p['a']]} − {labels[p['b']]} | {p['seeds']} | {_ci(p, 4)} "
                f"| {p['seeds_won']}/{len(p['seeds'])} | {_verdict(p, labels)} |"
                for p in d[what]
            ]
    if f["reproduction"]:
        lines += [
            "",
            "Re-runs against the committed records (same settings, seed, data, tokenizer):",
            "",
            "| model | seed | committed perplexity | re-run perplexity | largest difference per play (nats/token) |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {labels[r['variant']]} | {r['seed']} | {r['test_ppl']['committed']:.3f} "
            f"| {r['test_ppl']['rerun']:.3f} | {r['max_abs_nll_diff']:.1e} |"
            for r in f["reproduction"]
        ]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[], str]] = {
    "sort_default": sort_default,
    "lm_shakespeare": lm_shakespeare,
    "lm_shakespeare_3000": lm_shakespeare_3000,
    "sorting": sorting,
    "sorting_claim": sorting_claim,
    "sorting_budget": sorting_budget,
    "sorting_budget_seed3": lambda: sorting_budget("sorting_budget_seed3_cpu.json"),
    "generation": generation,
    "ltm_scaling": ltm_scaling,
    "edge_padding": edge_padding,
    "dialogue": dialogue,
    "dialogue_pretrained": dialogue_pretrained,
    "inspect_memory": inspect_memory,
    "gpt2_finetune": gpt2_finetune,
    "reach": reach,
    "recall": recall,
    "sorting_reach": sorting_reach,
    "overhead": overhead,
    "compile_training": compile_training,
    "sort_compile": sort_compile,
    "training_free_gpt2": training_free,
    "training_free_llama": lambda: training_free("llama"),
    "training_free_finetune_gpt2": training_free_finetune,
    "probes_gpt2": probes,
    "probes_llama": lambda: probes("llama"),
    "lm_reach": lm_reach,
}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- results:{name}:start -->\n)(.*?)(<!-- results:{name}:end -->)", re.S)


def render_results(text: str) -> str:
    """The results page's text with every results block re-rendered from the JSON files."""
    for name, render in RENDERERS.items():
        pattern = _block(name)
        if pattern.search(text):
            body = render()
            text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(3), text)
    return text


def blocks_in(text: str) -> list[str]:
    return re.findall(r"<!-- results:([\w-]+):start -->", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if docs/results.md is stale")
    args = parser.parse_args(argv)
    text = RESULTS_PAGE.read_text(encoding="utf-8")
    new = render_results(text)
    if args.check:
        if new != text:
            print("docs/results.md tables differ from results/*.json: run python benchmarks/report.py")
            return 1
        return 0
    RESULTS_PAGE.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
