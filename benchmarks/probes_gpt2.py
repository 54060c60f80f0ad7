"""The ``copy`` and ``passkey`` probes on the GPT-2 pretrained here, without memory, with its zero-initialised
memory and with the training-free memory.

    python benchmarks/pretrain.py --data /work/shared/data/shakespeare        # -> runs/gpt2-shakespeare
    python benchmarks/probes_gpt2.py --out results/probes_gpt2_cpu.json

* ``base``: the plain model (its 256 positions: longer probes are refused, and recorded as such);
* ``memory_zero``: ``add_memory`` as fine-tuning starts it (output projection 0: the base model block
  by block, the memory unused) — the reference a memory model has to beat;
* ``free_<density>_a<α>``: the training-free memory (no weights trained).

copy: a random span of 32 tokens repeated after gaps D (NLL on the second copy vs the first);
passkey: exact match over lengths × depths. All prompts from seed 0 (``infinite_former.data.probes``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from infinite_former.experiments.passkey import load_tokenizer
from infinite_former.experiments.probe import ProbeConfig, run_probe
from infinite_former.hf import add_memory
from infinite_former.utils import machine_info

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "runs" / "gpt2-shakespeare"))
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--gaps", default="0,64,128,512,2048")
    p.add_argument("--lengths", default="200,1000,4000")
    p.add_argument("--depths", default="0,0.5,1")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--free", default="gibbs:0.5,gaussian:0.5")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "results" / "probes_gpt2_cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import GPT2LMHeadModel

    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"{args.model}: no model; run benchmarks/pretrain.py first")
    tokenizer = load_tokenizer(args.model)
    ints = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
    configs = {
        "copy": ProbeConfig(task="copy", gaps=ints(args.gaps), span=32, trials=args.trials),
        "passkey": ProbeConfig(
            task="passkey",
            lengths=ints(args.lengths),
            depths=tuple(float(x) for x in args.depths.split(",")),
            trials=args.trials,
        ),
    }

    def plain() -> GPT2LMHeadModel:
        return GPT2LMHeadModel.from_pretrained(args.model).eval()

    models = {"base": plain(), "memory_zero": add_memory(plain(), block_size=args.block_size).eval()}
    for item in args.free.split(","):
        density, alpha = item.split(":")
        free = {"density": density, "alpha": float(alpha)}
        models[f"free_{density}_a{alpha}"] = add_memory(
            plain(), training_free=free, block_size=args.block_size
        )
    results: dict = {}
    for name, model in models.items():
        for task, config in configs.items():
            if name == "base":  # the plain model takes only what fits its positions
                limit = model.config.n_positions
                if task == "copy":
                    config = ProbeConfig(
                        **{**config.to_dict(), "gaps": tuple(g for g in config.gaps if 64 + g <= limit)}
                    )
                else:
                    lengths = tuple(n for n in config.lengths if n + 16 <= limit)
                    if not lengths:
                        results.setdefault(name, {})[task] = {
                            "refused": f"every length exceeds {limit} positions"
                        }
                        continue
                    config = ProbeConfig(**{**config.to_dict(), "lengths": lengths})
            print(f"{name} {task}", flush=True)
            with torch.no_grad():
                r = run_probe(model.eval(), config, tokenizer.encode, tokenizer.decode, progress=print)
            results.setdefault(name, {})[task] = r
    out = {
        "benchmark": "probes_gpt2",
        "command": " ".join(["python", "benchmarks/probes_gpt2.py", *sys.argv[1:]]),
        "model": args.model,
        "block_size": args.block_size,
        "results": results,
        "machine": {**machine_info(), "torch_threads": args.threads},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
