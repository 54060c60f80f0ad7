"""Render the README's results tables from results/*.json.

    python benchmarks/report.py            # rewrite the tables in README.md
    python benchmarks/report.py --check    # exit 1 if README.md differs from the JSON files

Each table lives in README.md between `<!-- results:NAME:start -->` and
`<!-- results:NAME:end -->`; tests/test_readme_results.py runs the check, so a
number in the README can only come from a committed results file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
README = ROOT / "README.md"


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _fmt(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


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
        f"{c['model']}: {c['n_layer']} layers, {c['n_embd']} wide, {c['n_head']} heads; memory N = "
        f"{c['num_basis']}, M = {c['num_samples']}, block {c['block_size']}. Batch 1, greedy, "
        f"{c['new_tokens']} new tokens, median of {c['repeats']}. Machine: " + _machine(d["machine"]) + ".",
        "",
        "| model | tokens before generating | tokens/s | ms per token (median) | state MB | blocks absorbed while generating |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in d["plain_gpt2"]:
        lines.append(
            f"| GPT-2, KV cache | {r['context_tokens']:,} | {r['tokens_per_s']:.2f} "
            f"| {r['token_ms_median']:.0f} | {r['state_mb']:.1f} | – |"
        )
    for r in d["gpt2_with_memory"]:
        how = ""
        if r["tokens_absorbed_synthetic"]:
            how = f" ({r['tokens_read_full_model']:,} read by the model, {r['tokens_absorbed_synthetic']:,} fast-forwarded)"
        lines.append(
            f"| GPT-2 + memory | {r['tokens_read']:,}{how} | {r['tokens_per_s']:.2f} "
            f"| {r['token_ms_median']:.0f} | {r['state_mb']:.1f} | {r['blocks_absorbed_during_generation']} |"
        )
    return "\n".join(lines)


LABELS = {
    "xl": "Transformer-XL",
    "compressive": "Compressive",
    "infinite": "∞-former",
    "infinite_sticky": "∞-former (sticky)",
}


def sorting() -> str:
    d = _load("sorting_cpu.json")
    c = d["config"]
    lengths = [str(n) for n in c["lengths"]]
    budget = c["memory_budget"]
    lines = [
        f"{c['num_symbols']} symbols, lengths {', '.join(lengths)}, segment {c['segment_len']}; "
        f"{c['n_layers']} layers, d {c['d_model']}; {c['steps']} steps of batch {c['batch_size']} per model, "
        f"seeds {c['seeds']}. Memory per layer: XL {budget['xl']['mem_len']} states; compressive "
        f"{budget['compressive']['mem_len']} + {budget['compressive']['cmem_len']} compressed; ∞-former "
        f"{budget['infinite']['mem_len']} + N = {budget['infinite']['num_basis']}. Test token accuracy, "
        f"mean ± std over seeds (per seed in the JSON). Machine: " + _machine(d["machine"]) + ".",
        "",
        "| model | " + " | ".join(f"length {n}" for n in lengths) + " | training tokens/s |",
        "|---|" + "---:|" * (len(lengths) + 1),
    ]
    for m, per_len in d["models"].items():
        cells = [f"{per_len[n]['mean']:.3f} ± {per_len[n]['std']:.3f}" for n in lengths]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + f" | {d['throughput_tokens_per_s'][m]:,.0f} |")
    ref = d["reference_accuracy"]
    longest = lengths[-1]
    lines += [
        "| *rule: rank by the counts of the last 96 tokens* | "
        + " | ".join(f"{ref[n]['last_96_token_counts']:.3f}" for n in lengths)
        + " | |",
    ]
    abl = d["ltm_ablation_at_longest"]
    lines += ["", f"Long-term memory emptied just before the answer segment, length {longest}, per seed:", ""]
    lines += ["| model | intact | memory emptied |", "|---|---|---|"]
    for m in ("infinite", "infinite_sticky"):
        if m in abl:
            full = ", ".join(f"{x:.3f}" for x in abl[m]["full"])
            wiped = ", ".join(f"{x:.3f}" for x in abl[m]["wiped"])
            lines.append(f"| {LABELS[m]} | {full} | {wiped} |")
    return "\n".join(lines)


def sorting_claim() -> str:
    """The paper's claim at the longest length, stated from the numbers (means and per seed)."""
    d = _load("sorting_cpu.json")
    longest = str(d["config"]["lengths"][-1])
    acc = {m: v[longest] for m, v in d["models"].items()}
    base = {b: acc[b] for b in ("xl", "compressive") if b in acc}
    base_text = ", ".join(f"{LABELS[b]} {v['mean']:.3f}" for b, v in base.items())
    out = []
    for inf in ("infinite", "infinite_sticky"):
        if inf not in acc:
            continue
        above = all(acc[inf]["mean"] > v["mean"] for v in base.values())
        seeds = acc[inf]["seeds"]
        wins = sum(all(s > v["seeds"][i] for v in base.values()) for i, s in enumerate(seeds))
        out.append(
            f"- {LABELS[inf]}, length {longest}: mean {acc[inf]['mean']:.3f}, "
            f"{'above' if above else 'not above'} both baselines ({base_text}); "
            f"above both in {wins} of {len(seeds)} seeds (same seed, same data order)."
        )
    return "\n".join(out)


def lm_shakespeare() -> str:
    runs = [_load("lm_shakespeare_cpu.json"), _load("lm_shakespeare_cpu_seed1.json")]
    use = _load("lm_shakespeare_cpu_memory_use.json")["models"]
    c = runs[0]["config"]
    mem = c["memory"]
    seeds = " / ".join(str(r["config"]["seed"]) for r in runs)
    lines = [
        f"{c['tokenizer']}; {c['n_layers']} layers, d {c['d_model']}, {c['steps']} steps × {c['batch_size']} "
        f"lanes × {c['seg_len']} tokens per model ({c['tokens_per_model']:,} tokens); memory per layer: XL "
        f"{mem['xl']['mem_len']}, compressive {mem['compressive']['mem_len']} + {mem['compressive']['cmem_len']}, "
        f"∞-former {mem['infinite']['mem_len']} + N = {mem['infinite']['num_basis']}; LTM init: "
        f"{c['ltm_init']}. Test split. Machine: " + _machine(runs[0]["machine"]) + ".",
        "",
        f"| model | test perplexity, seed {seeds} | bits per byte, seed {seeds} "
        "| perplexity, only the last 128 states kept (seed 0) | training tokens/s (seed 0) |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in runs[0]["models"]:
        ppl = " / ".join(f"{r['models'][m]['test_ppl']:.2f}" for r in runs)
        bpb = " / ".join(f"{r['models'][m]['test_bpb']:.3f}" for r in runs)
        short = use.get(m, {}).get("test_ppl_short_term_only")
        lines.append(
            f"| {LABELS[m]} | {ppl} | {bpb} | {_fmt(short, 2)} | {runs[0]['models'][m]['tokens_per_s']:,.0f} |"
        )
    best = [min(r["models"], key=lambda m, r=r: r["models"][m]["test_ppl"]) for r in runs]
    lines += [
        "",
        "Lowest perplexity: "
        + ", ".join(f"seed {r['config']['seed']}: {LABELS[b]}" for r, b in zip(runs, best))
        + ".",
    ]
    return "\n".join(lines)


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


RENDERERS: dict[str, Callable[[], str]] = {
    "sort_default": sort_default,
    "lm_shakespeare": lm_shakespeare,
    "sorting": sorting,
    "sorting_claim": sorting_claim,
    "generation": generation,
    "ltm_scaling": ltm_scaling,
    "edge_padding": edge_padding,
}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- results:{name}:start -->\n)(.*?)(<!-- results:{name}:end -->)", re.S)


def render_readme(text: str) -> str:
    """README text with every results block re-rendered from the JSON files."""
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
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if README.md is stale")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    new = render_readme(text)
    if args.check:
        if new != text:
            print("README.md results tables differ from results/*.json: run python benchmarks/report.py")
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
