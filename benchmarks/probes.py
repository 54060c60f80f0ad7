"""The ``copy`` and ``passkey`` probes on a causal LM pretrained here (GPT-2 or Llama): without memory,
with its zero-initialised memory, with the training-free memory, and fine-tuned models.

    python benchmarks/pretrain.py --arch gpt2 --out runs/gpt2-shakespeare      # (and --arch llama)
    python benchmarks/probes.py --model runs/gpt2-shakespeare            # -> results/probes_gpt2_cpu.json
    python benchmarks/probes.py --model runs/gpt2-shakespeare \\
        --finetuned no_memory_ft=runs/ft-plain/model:plain --finetuned memory_ft=runs/ft-memory/model

* ``base``: the plain model (its positions: longer probes are left out, and recorded as such);
* ``memory_zero``: ``add_memory`` as fine-tuning starts it (output projection 0: the base model block
  by block, the memory unused) — the reference a memory model has to beat;
* ``free_<density>_a<α>`` / ``free_<density>_softmax``: the training-free memory (no weights trained);
* ``--finetuned NAME=DIR``: a model fine-tuned with memory (``lm finetune``'s ``<run>/model``), read
  with its memory; ``NAME=DIR:plain``: one fine-tuned without memory, read as the plain model in its
  window (the base model's class, e.g. GPT2LMHeadModel).

copy: a random span of 32 tokens repeated after gaps D (NLL on the second copy vs the first; the same
samples for every model, so each model is compared with ``base`` and ``memory_zero`` paired by sample);
passkey: exact match over lengths × depths. All prompts from seed 0 (``infinite_former.data.probes``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from infinite_former.experiments.passkey import load_tokenizer
from infinite_former.experiments.probe import ProbeConfig, context_limit, run_probe
from infinite_former.hf import add_memory, load_model
from infinite_former.hf.training_free import TrainingFreeConfig
from infinite_former.stats import paired_comparison
from infinite_former.training.records import portable_path
from infinite_former.utils import machine_info

REPO = Path(__file__).resolve().parents[1]
MEMORY = dict(num_basis=128, num_samples=128, tau=0.5)  # the training-free and fine-tuning benchmarks'


def within(config: ProbeConfig, task: str, limit: int) -> ProbeConfig | None:
    """config restricted to what a model of ``limit`` positions takes (None: nothing fits)."""
    if task == "copy":
        gaps = tuple(g for g in config.gaps if 2 * config.span + g <= limit)
        return ProbeConfig(**{**config.to_dict(), "gaps": gaps}) if gaps else None
    lengths = tuple(n for n in config.lengths if n + 16 <= limit)
    return ProbeConfig(**{**config.to_dict(), "lengths": lengths}) if lengths else None


def copy_pairs(results: dict, references: tuple[str, ...] = ("base", "memory_zero")) -> list[dict]:
    """Each model's NLL on the second copy against each reference's, per gap, paired by sample."""
    out = []
    for name, res in results.items():
        for ref in references:
            if name in ("base", ref) or ref not in results or "per_gap" not in res.get("copy", {}):
                continue
            for gap, row in res["copy"]["per_gap"].items():
                other = results[ref].get("copy", {}).get("per_gap", {}).get(gap)
                if other is None:
                    continue
                pair = paired_comparison(
                    row["nll_second_copy_trials"], other["nll_second_copy_trials"], names=(name, ref),
                    higher_is_better=False,
                )  # fmt: skip
                out.append(
                    {**pair, "gap": int(gap), "unit": "NLL (nats/token) of the second copy, per sample"}
                )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "runs" / "gpt2-shakespeare"))
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--gaps", default="0,64,128,512,2048")
    p.add_argument("--span", type=int, default=32)
    p.add_argument("--copy-trials", type=int, default=20)
    p.add_argument("--lengths", default="200,1000,4000")
    p.add_argument("--depths", default="0,0.5,1")
    p.add_argument("--trials", type=int, default=3, help="passkey prompts per (length, depth)")
    p.add_argument("--free", default="gibbs:0.5,gaussian:0.5,gibbs:softmax", help="DENSITY:ALPHA|softmax,...")
    p.add_argument("--finetuned", action="append", default=[], help="NAME=DIR or NAME=DIR:plain")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="default: results/probes_<model_type>_cpu.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    if not (Path(args.model) / "model.safetensors").is_file():
        sys.exit(f"{args.model}: no model; run benchmarks/pretrain.py first")
    tokenizer = load_tokenizer(args.model)
    ints = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
    configs = {
        "copy": ProbeConfig(task="copy", gaps=ints(args.gaps), span=args.span, trials=args.copy_trials),
        "passkey": ProbeConfig(
            task="passkey",
            lengths=ints(args.lengths),
            depths=tuple(float(x) for x in args.depths.split(",")),
            trials=args.trials,
        ),
    }

    def plain():
        return AutoModelForCausalLM.from_pretrained(args.model).eval()

    model_type = plain().config.model_type
    args.out = args.out or REPO / "results" / f"probes_{model_type}_cpu.json"
    memory = dict(block_size=args.block_size, **MEMORY)
    models = {"base": plain, "memory_zero": lambda: add_memory(plain(), **memory)}
    for item in args.free.split(","):
        free = TrainingFreeConfig.parse(item)
        models[free.label] = lambda free=free: add_memory(plain(), training_free=free, **memory)
    for item in args.finetuned:
        name, _, folder = item.partition("=")
        if folder.endswith(":plain"):  # its weights in the base model's class: the plain model in its window
            folder = folder.removesuffix(":plain")
            models[name] = lambda folder=folder: type(plain()).from_pretrained(folder)
        else:
            models[name] = lambda folder=folder: load_model(folder, local_files_only=True)
    results: dict = {}
    for name, build in models.items():
        model = build().eval()
        limit = context_limit(model)
        results[name] = {
            "memory": limit is None,
            "finetuned": name in {i.partition("=")[0] for i in args.finetuned},
        }
        for task, config in configs.items():
            if limit is not None:  # a model without memory takes only what fits its positions
                config = within(config, task, limit[0])
                if config is None:
                    results[name][task] = {"refused": f"every prompt exceeds {limit[0]} positions"}
                    continue
            print(f"{name} {task}", flush=True)
            with torch.no_grad():
                r = run_probe(model, config, tokenizer.encode, tokenizer.decode, progress=print)
            results[name][task] = r
    out = {
        "benchmark": "probes",
        "command": " ".join(["python", "benchmarks/probes.py", *(sys.argv[1:] if argv is None else argv)]),
        "model": portable_path(args.model),
        "model_type": model_type,
        "memory": memory,
        "finetuned": [f"{n}={portable_path(f)}" for n, _, f in (i.partition("=") for i in args.finetuned)],
        "results": results,
        "copy_pairs": copy_pairs(results),
        "machine": {**machine_info(), "torch_threads": args.threads},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for pair in out["copy_pairs"]:
        print(
            f"copy gap {pair['gap']}: {pair['a']} - {pair['b']}: {pair['mean_diff']:+.4f} {pair['verdict']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
