"""Document-grounded dialogue on Shakespeare's plays at CPU scale: no memory vs ∞-former vs
∞-former (sticky), the same small GPT-2 trained from scratch on the same examples for the same steps.

    python benchmarks/dialogue_shakespeare.py [--data ../shared/data/shakespeare] [--steps 1500] ...

The set (``data/dialogue.read_shakespeare_dialogues``): one dialogue per scene of every play in
train/ valid/ test/; its turns are the scene's speeches (the first ``--max-turns``), its document
the play's text before the scene (the last ``--max-document-chars`` characters), and every speech
after the first is a reply to predict. It is written as JSONL and every model runs through
``infinite-former dialogue train`` (experiments/dialogue.py): the same tokenizer (a byte-level BPE
trained on the training dialogues), examples, order, seed and steps. The model without memory sees
only the reply's block; the ∞-formers read the document and the older history through the memory.

Writes results/dialogue_cpu.json: per model F1, ROUGE-1, ROUGE-L, METEOR and reply perplexity on
the test plays, and paired comparisons over test dialogues (``stats.paired_comparison``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from infinite_former.data.dialogue import write_shakespeare_jsonl  # noqa: E402
from infinite_former.experiments.dialogue import DialogueTrainSettings, dialogue_train  # noqa: E402
from infinite_former.stats import paired_comparison  # noqa: E402
from infinite_former.utils import machine_info  # noqa: E402

MODELS = {"no_memory": dict(no_memory=True), "infinite": dict(uniform=True), "infinite_sticky": {}}
METRICS = ("f1", "rouge1", "rougeL", "meteor", "reply_ppl")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "shakespeare"))
    p.add_argument("--out", default=str(REPO / "results" / "dialogue_cpu.json"))
    p.add_argument("--run-root", default=str(REPO / "runs" / "dialogue_shakespeare"))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--max-document-chars", type=int, default=1500)
    p.add_argument("--max-turns", type=int, default=12, help="first turns of each scene")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps (= training replies) per model")
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--num-basis", type=int, default=32, help="N = M")
    p.add_argument("--lr", type=float, default=1e-3, help="from scratch: all weights, memory included")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-replies", type=int, default=3, help="test replies per dialogue (evenly spaced)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def train_settings(a: argparse.Namespace, name: str, data_dir: Path) -> DialogueTrainSettings:
    """`dialogue train`'s settings for one model (from scratch, N = M; the memory's lr = the model's)."""
    return DialogueTrainSettings(
        data=str(data_dir), run_dir=str(Path(a.run_root) / name), steps=a.steps, block_size=a.block_size,
        n_layer=a.n_layer, n_embd=a.n_embd, n_head=a.n_head, vocab_size=a.vocab_size,
        ltm={"num_basis": a.num_basis, "num_samples": a.num_basis}, lr=a.lr, ltm_lr=a.lr, warmup=a.warmup,
        eval_splits=("test",), max_eval_replies=a.eval_replies, seed=a.seed, progress=False,
        tensorboard=False, log_every=100, **MODELS[name],
    )  # fmt: skip


def main() -> None:
    a = parse()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data_dir = Path(a.run_root) / "data"
    counts = write_shakespeare_jsonl(a.data, data_dir, a.max_document_chars, a.max_turns)
    print(f"data: {counts}", flush=True)

    results, per_dialogue, runs = {}, {}, {}
    for name in a.models.split(","):
        settings = train_settings(a, name, data_dir)
        t = time.perf_counter()
        out = dialogue_train(settings)
        res = out["eval"]["test"]
        results[name] = {k: res["overall"][k] for k in METRICS} | {"parameters": out["parameters"]}
        per_dialogue[name] = res["per_dialogue"]
        runs[name] = {
            "steps": out["steps"],
            "epochs": out["epochs"],
            "train_loss_last": out["train_loss_last"],
            "train_seconds": out["train_seconds"],
            "eval_seconds": res["seconds"],
            "seconds": time.perf_counter() - t,
            "replies": res["overall"]["replies"],
            "examples": res["replies"][:3],
        }
        print(f"{name}: {results[name]} ({runs[name]['seconds']:.0f} s)", flush=True)

    def column(name: str, key: str) -> list[float]:
        rows = per_dialogue[name]
        if key == "nll":  # mean NLL per reply token of each dialogue: log of its reply perplexity
            return [math.log(r["reply_ppl"]) for r in rows]
        return [r[key] for r in rows]

    pairs = []
    names = list(results)
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            for key, higher in (("f1", True), ("rougeL", True), ("meteor", True), ("nll", False)):
                if key == "meteor" and results[x]["meteor"] is None:
                    continue
                cmp = paired_comparison(column(y, key), column(x, key), (y, x), higher_is_better=higher)
                pairs.append({"metric": "log reply ppl" if key == "nll" else key, **cmp})
    out = {
        "machine": machine_info(),
        "models": results,
        "pairs": pairs,
        "runs": runs,
        "settings": {
            **{k: v for k, v in vars(a).items() if k not in ("data", "out", "run_root")},
            "data": "shared/data/shakespeare",
            "counts": counts,
            "memory": "N = M = num_basis per layer, τ = 0.5, KL 1e-6; lr for all weights (from scratch)",
            "pairs_over": "test dialogues (scenes), one training seed; bootstrap over dialogues",
        },
        "total_seconds": time.perf_counter() - t0,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out} ({out['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
