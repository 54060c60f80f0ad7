"""What the benchmarks' memories hold: ``infinite-former lm inspect`` on their trained models.

    python benchmarks/inspect_memory.py lm     # the 3000-step LM benchmark's ∞-former (sticky), seed 0
    python benchmarks/inspect_memory.py gpt2   # the GPT-2 fine-tuned with sticky memories, seed 0
    python benchmarks/inspect_memory.py lm_infinite lm_reach   # issue 18's carry-back (benchmarks/lm_reach.py):
        # the 3000-step LM's ∞-former (uniform samples), the paper's memory and uniform_time + auto widths

Each reads the test play King Lear through the model (the LM in its training segments, GPT-2 in
its blocks) and writes results/inspect/<name>/: inspect.json (attention by age, sticky samples,
reconstruction error by age, per layer) and the three figures. The models come from the
benchmarks' run folders (not committed): `python benchmarks/lm_shakespeare.py run --seeds 0
--variants infinite_sticky` and `python benchmarks/gpt2_finetune.py run --seeds 0 --variants
infinite_sticky` rebuild them; `python benchmarks/lm_reach.py run --seeds 0 --variants infinite_reach
infinite` the two of the carry-back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from infinite_former.experiments.lm import InspectSettings, lm_inspect
from infinite_former.utils import write_json

REPO = Path(__file__).resolve().parents[1]
DATA = os.environ.get("INFINITE_FORMER_SHAKESPEARE", str(REPO.parent / "shared" / "data" / "shakespeare"))
TARGETS = {  # the model each target reads: a `lm train` run, or a fine-tuned model with memory
    "lm": ("run", REPO / "runs" / "lm_shakespeare" / "infinite_sticky-seed0"),
    "lm_infinite": ("run", REPO / "runs" / "lm_shakespeare" / "infinite-seed0"),
    "lm_reach": ("run", REPO / "runs" / "lm_shakespeare" / "infinite_reach-seed0"),
    "gpt2": ("hf", REPO / "runs" / "gpt2_finetune" / "infinite_sticky-seed0" / "model"),
}
OUT = REPO / "results" / "inspect"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", choices=sorted(TARGETS))
    p.add_argument("--text", default=str(Path(DATA) / "test" / "lear.txt"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    for name in a.targets:
        kind, model = TARGETS[name]
        out = OUT / name
        lm_inspect(InspectSettings(text=a.text, out=str(out), device="cpu", **{kind: str(model)}))
        report = json.loads((out / "inspect.json").read_text())
        report["command"] = f"python benchmarks/inspect_memory.py {name}"
        report["model_source"] = str(model.relative_to(REPO))
        if kind == "run":  # the LTM options beyond the paper that the report's "ltm" leaves out
            ltm = json.loads((model / "lm_config.json").read_text())["model"]["ltm"]
            report["ltm_options"] = {k: ltm[k] for k in ("schedule", "widths", "sticky")}
        write_json(out / "inspect.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
