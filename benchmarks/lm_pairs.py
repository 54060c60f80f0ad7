"""Paired comparisons of the Shakespeare LM runs, per test document and seed.

    python benchmarks/lm_pairs.py     # reads results/lm_shakespeare_600steps_cpu.json and _seed1.json (600-step runs)

For every pair of memory types: the mean over (seed, document) of the difference in per-document
log perplexity (nats per token; negative = the first model is better) with a bootstrap 95% CI over
seeds × documents (infinite_former.stats). Writes results/lm_shakespeare_600steps_cpu_pairs.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from infinite_former.stats import paired_comparison

RESULTS = Path(__file__).resolve().parent.parent / "results"
RUNS = ("lm_shakespeare_600steps_cpu.json", "lm_shakespeare_600steps_cpu_seed1.json")
PAIRS = (
    ("infinite", "xl"),
    ("infinite_sticky", "xl"),
    ("infinite", "compressive"),
    ("infinite_sticky", "compressive"),
    ("infinite_sticky", "infinite"),
    ("compressive", "xl"),
)


def main() -> None:
    runs = [json.loads((RESULTS / name).read_text()) for name in RUNS]
    models = list(runs[0]["models"])
    docs = sorted(runs[0]["models"][models[0]]["per_document_ppl"])

    def log_ppl(m: str) -> list[list[float]]:  # (seeds, documents)
        return [[math.log(r["models"][m]["per_document_ppl"][d]) for d in docs] for r in runs]

    pairs = []
    for a, b in PAIRS:
        p = paired_comparison(log_ppl(a), log_ppl(b), names=(a, b), higher_is_better=False)
        pairs.append(p)
        print(f"{a} - {b}: {p['mean_diff']:+.4f} nats/token {p['ci95']} {p['verdict']}")
    out = {
        "what": "per-document log perplexity (nats/token), a - b, mean over seeds x test documents; "
        "bootstrap 95% CI over seeds and documents; lower is better",
        "sources": list(RUNS),
        "seeds": [r["config"]["seed"] for r in runs],
        "documents": docs,
        "parameters": {m: runs[0]["models"][m]["parameters"] for m in models},
        "pairs": pairs,
        "command": "python benchmarks/lm_pairs.py",
    }
    (RESULTS / "lm_shakespeare_600steps_cpu_pairs.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
