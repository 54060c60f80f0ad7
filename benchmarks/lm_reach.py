"""Issue 18's carry-back: the 3000-step Shakespeare LM with the recall benchmark's best LTM options.

    python benchmarks/lm_reach.py run --seeds 0 1 2                     # -> results/lm_reach_cpu_runs/
    python benchmarks/lm_reach.py run --seeds 0 --variants infinite     # a reference re-run, today's code
    python benchmarks/lm_reach.py summarize                             # -> results/lm_reach_cpu.json

``infinite_reach`` is the ∞-former (uniform samples) with ``schedule="uniform_time"`` and
``widths="auto"`` (lm_shakespeare.REACH), trained and tested exactly as the variants of
benchmarks/lm_shakespeare.py (same settings S, seeds, tokenizer, data and test plays). The summary
pairs it, by seed and test play, with that benchmark's committed records of the same seeds and
settings key. Those records were made by an older version of the code, maybe on another CPU: a
reference variant re-run here (``--variants infinite``) says how far today's code and machine land
from them (``reproduction``), and infinite_reach is also paired with the re-runs (``pairs_rerun``:
both sides made by one code version on one machine).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lm_shakespeare as lm  # noqa: E402  (the LM benchmark: settings, training, records)
from infinite_former.stats import paired_comparison, seeds_won  # noqa: E402
from infinite_former.training.records import RunRecords, nll_per_token  # noqa: E402
from infinite_former.utils import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "results" / "lm_reach_cpu_runs"
OUT = ROOT / "results" / "lm_reach_cpu.json"
NAME = "infinite_reach"
OTHERS = ("infinite", "infinite_sticky", "xl_equal", "xl_stm", "xl_params", "compressive")
UNIT = "nats/token per test play"


def cmd_run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    RunRecords(RECORDS, lm.settings_key()).run_missing(
        args.seeds,
        args.variants,
        lambda name, seed: lm.run_one(name, seed, Path(args.runs_dir)),
        lambda rec: f"test ppl {rec['test_ppl']:.3f} ({rec['seconds']:.0f} s)",
    )


def _model(recs: dict[int, dict], seeds: list[int], source: str) -> dict:
    rs = [recs[k] for k in seeds]
    return {
        "variant": rs[0]["variant"],
        "source": source,
        "parameters": rs[0]["parameters"],
        "test_ppl": statistics.fmean(r["test_ppl"] for r in rs),
        "test_bpb": statistics.fmean(r["test_bpb"] for r in rs),
        "seeds": [{"seed": r["seed"], "test_ppl": r["test_ppl"], "test_bpb": r["test_bpb"]} for r in rs],
    }


def _pair(a: dict[int, dict], b: dict[int, dict], seeds: list[int], docs: list[str], names: tuple) -> dict:
    """a − b in nats/token, paired by seed and test play; seeds_won on each seed's log perplexity."""
    xa, xb = ([nll_per_token(r[k]["per_document"], docs) for k in seeds] for r in (a, b))
    p = paired_comparison(xa, xb, names=names, higher_is_better=False)
    log_ppl = lambda r: [math.log(r[k]["test_ppl"]) for k in seeds]  # noqa: E731
    return {**p, "unit": UNIT, "seeds": seeds, "seeds_won": seeds_won(log_ppl(a), log_ppl(b), False)}


def reproduction(reruns: dict[str, dict[int, dict]], committed: dict[str, dict[int, dict]]) -> list[dict]:
    """Each re-run reference (variant, seed) against its committed record: same tokens per play
    (same data and tokenizer), and how far today's code lands from the old one's test NLL."""
    out = []
    for variant, by_seed in reruns.items():
        for seed, new in sorted(by_seed.items()):
            old = committed.get(variant, {}).get(seed)
            if old is None:
                continue
            docs = sorted(old["per_document"])
            diff = [x - y for x, y in zip(*(nll_per_token(r["per_document"], docs) for r in (new, old)))]
            out.append({
                "variant": variant, "seed": seed,
                "same_plays_and_tokens": {d: v["tokens"] for d, v in new["per_document"].items()}
                == {d: v["tokens"] for d, v in old["per_document"].items()},
                "same_parameters": new["parameters"] == old["parameters"],
                "test_ppl": {"rerun": new["test_ppl"], "committed": old["test_ppl"]},
                "nll_diff_per_play": dict(zip(docs, diff)),
                "max_abs_nll_diff": max(abs(x) for x in diff),
            })  # fmt: skip
    return out


def _commit_of(path: Path) -> str | None:
    """The commit that last wrote ``path`` (None outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h %cs", "--", str(path)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def summarize(ours: dict[str, dict[int, dict]], theirs: dict[str, dict[int, dict]]) -> dict:
    """The summary of infinite_reach's records (``ours``, with any reference re-runs) against the
    LM benchmark's committed records (``theirs``): {variant: {seed: record}} each."""
    reach = ours[NAME]
    seeds = sorted(k for k in reach if all(k in theirs.get(o, {}) for o in OTHERS))
    if not seeds:
        raise SystemExit(f"no seed of {NAME} has committed records of every other variant yet")
    docs = sorted(reach[seeds[0]]["per_document"])
    for o in OTHERS:
        for k in seeds:
            if sorted(theirs[o][k]["per_document"]) != docs:
                raise SystemExit(f"{o} seed {k} was tested on other plays than {NAME}: {docs}")
    models = {NAME: _model(reach, seeds, "results/lm_reach_cpu_runs")}
    models |= {o: _model(theirs[o], seeds, "results/lm_shakespeare_cpu_runs") for o in OTHERS}
    pairs = [_pair(reach, theirs[o], seeds, docs, (NAME, o)) for o in OTHERS]
    reruns = {v: by for v, by in ours.items() if v != NAME and by}
    rerun_pairs = []
    for v, by in reruns.items():
        common = sorted(set(by) & set(reach))
        if common:
            rerun_pairs.append(_pair(reach, by, common, docs, (NAME, v)))
    repro = reproduction(reruns, theirs)
    tokens_match = all(
        {d: reach[k]["per_document"][d]["tokens"] for d in docs}
        == {d: theirs[o][k]["per_document"][d]["tokens"] for d in docs}
        for o in OTHERS
        for k in seeds
    )
    return {
        "machine": reach[seeds[0]]["machine"],
        "reference_machine": theirs["infinite"][seeds[0]]["machine"],
        "reference_parameters": {o: theirs[o][seeds[0]]["parameters"] for o in OTHERS},
        "config": {
            "variant": f"{NAME}: ∞-former (uniform samples) with LTM options {lm.REACH}",
            "flags": reach[seeds[0]]["flags"],
            "settings_key": lm.settings_key(),
            "settings": {**lm.S, "data": "../shared/data/shakespeare", "eval_split": "test"},
            "paired_with": "results/lm_shakespeare_cpu_runs (the same settings key, seeds, tokenizer and test plays)",
            "metric": "test NLL per token of each test play (log perplexity); lower is better",
            "commands": [
                "python benchmarks/lm_reach.py run --seeds 0 1 2",
                "python benchmarks/lm_reach.py run --seeds 0 --variants infinite",
                "python benchmarks/lm_reach.py summarize",
            ],
        },  # fmt: skip
        "fairness": {
            "settings": "both sides are records of config.settings_key (RunRecords loads no other)",
            "same_tokens_per_play": tokens_match,
            "same_cpu_model": reach[seeds[0]]["machine"].get("cpu_model")
            == theirs["infinite"][seeds[0]]["machine"].get("cpu_model"),
            "reference_records_written_by": _commit_of(lm.RECORDS / "infinite-seed0.json"),
            "reproduction": repro,
        },
        "seeds": seeds,
        "documents": docs,
        "models": models,
        "pairs": pairs,
        "pairs_rerun": rerun_pairs,
        "what": {
            "pairs": "infinite_reach - each committed record of the LM benchmark, nats/token, paired by seed "
            "and test play (bootstrap 95% CI over seeds x plays; negative: infinite_reach better)",
            "pairs_rerun": "infinite_reach - the same variant re-run by this code on this machine (its seeds only)",
        },
    }


def cmd_summarize(args: argparse.Namespace) -> None:
    key = lm.settings_key()
    ours = RunRecords(RECORDS, key).load([NAME, *OTHERS])
    result = summarize(ours, RunRecords(lm.RECORDS, key).load(OTHERS))
    write_json(OUT, result)
    for what in ("pairs", "pairs_rerun"):
        for p in result[what]:
            lo, hi = p["ci95"]
            print(f"{what}: {NAME} - {p['b']}: {p['mean_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] {p['verdict']}")
    for r in result["fairness"]["reproduction"]:
        print(
            f"re-run {r['variant']} seed {r['seed']}: {r['test_ppl']}, max |Δ nll| {r['max_abs_nll_diff']:.2e}"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--variants", nargs="+", default=[NAME], choices=[NAME, *OTHERS])
    r.add_argument("--runs-dir", default=str(ROOT / "runs" / "lm_shakespeare"))
    r.set_defaults(func=cmd_run)
    sub.add_parser("summarize").set_defaults(func=cmd_summarize)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
