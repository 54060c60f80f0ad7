"""How much does each trained Shakespeare LM use the memory beyond its short-term part?

Re-evaluates trained `lm train` runs (<run-root>/<run>, any memory type) on the test split twice: as trained, and
with everything older than the last m = mem_len tokens removed:
- xl: the Transformer-XL memory truncated to its last m vectors (the other models' STM length);
- compressive: the compressed memory emptied before every segment;
- infinite / infinite_sticky: the long-term memory's output projection set to 0 (it adds nothing).
gain = ppl(short-term only) - ppl(full): how much the long-range part lowers the perplexity.

    python benchmarks/lm_shakespeare_memory_use.py --run-root runs/lm_shakespeare \
        --models xl_equal-seed0,compressive-seed0,infinite-seed0,infinite_sticky-seed0 --out results/...

results/lm_shakespeare_600steps_cpu_memory_use.json came from the defaults, on the runs of the
600-step benchmark (`git show 9c33fd3:benchmarks/lm_shakespeare.py`, its runs named by memory type).
Each model's num_parameters (base: the same model as a Transformer-XL; memory: what its memory adds)
is recorded with it; for a file written before that, without the runs:

    python benchmarks/lm_shakespeare_memory_use.py params   # models rebuilt from the recorded settings
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from infinite_former.data.text import load_corpus_split, tokenize_documents  # noqa: E402
from infinite_former.experiments.lm import load_trained_lm  # noqa: E402
from infinite_former.models import InfiniteFormerLM, ModelConfig  # noqa: E402
from infinite_former.models.lm import zero_ltm_output  # noqa: E402
from infinite_former.training import evaluate_documents, evaluate_lm  # noqa: E402
from infinite_former.training.records import parameter_counts  # noqa: E402
from infinite_former.utils import machine_info, write_json  # noqa: E402

SETTINGS = REPO / "results" / "lm_shakespeare_600steps_cpu.json"  # the runs' settings and parameters


def _relative(path: str) -> str:
    """A path as the results file records it: relative to the repository (no machine's absolute path)."""
    return os.path.relpath(path, REPO) if os.path.isabs(path) else path


def num_parameters(config: ModelConfig) -> dict[str, int]:
    """{"total", "base", "memory"}: base = the same model as a Transformer-XL (its memory has no
    weights), memory = what the compressor or the LTMs add. Built from the config, random weights."""
    xl = dataclasses.replace(config, memory_type="xl")
    return parameter_counts(InfiniteFormerLM(config), InfiniteFormerLM(xl))


def recorded_config(settings: dict, name: str, vocab_size: int) -> ModelConfig:
    """The ModelConfig of run ``name`` (a memory type) of the 600-step benchmark, from its results file."""
    c, mem = settings["config"], settings["config"]["memory"][name]
    memory = {"mem_len": mem["mem_len"]}
    if name == "compressive":
        memory |= {"cmem_len": mem["cmem_len"], "compression_rate": mem["compression_rate"]}
    elif name.startswith("infinite"):
        memory |= {"ltm": {"num_basis": mem["num_basis"], "num_samples": mem["num_samples"]}}
    dims = {k: c[k] for k in ("d_model", "n_layers", "n_heads", "d_inner", "dropout")}
    return ModelConfig(vocab_size=vocab_size, memory_type=name, **dims, **memory)


def cmd_params(argv: list[str]) -> None:
    """Write num_parameters into an existing results file, each model rebuilt from the settings file
    of the runs it evaluated; the totals must equal the parameters that file recorded."""
    p = argparse.ArgumentParser(prog="lm_shakespeare_memory_use.py params", description=cmd_params.__doc__)
    p.add_argument("--out", default=str(REPO / "results" / "lm_shakespeare_600steps_cpu_memory_use.json"))
    p.add_argument("--settings", default=str(SETTINGS), help="results file of the runs (config, parameters)")
    p.add_argument("--vocab-size", type=int, default=2048, help="the runs' BPE vocabulary")
    a = p.parse_args(argv)
    d, settings = json.loads(Path(a.out).read_text()), json.loads(Path(a.settings).read_text())
    for name, m in d["models"].items():
        m["num_parameters"] = num_parameters(recorded_config(settings, name, a.vocab_size))
        recorded = settings["models"][name]["parameters"]
        if m["num_parameters"]["total"] != recorded:
            raise SystemExit(
                f"{name}: rebuilt model has {m['num_parameters']['total']:,} parameters, the run {recorded:,}"
            )
        print(name, m["num_parameters"])
    d["config"]["num_parameters_from"] = _relative(a.settings)
    write_json(a.out, d)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["params"]:
        return cmd_params(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-root", default=str(REPO / "runs" / "lm_shakespeare"))
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "shakespeare"))
    p.add_argument("--split", default="test")
    p.add_argument("--stm", type=int, default=128, help="m: the short-term length kept")
    p.add_argument("--batch-size", type=int, default=3)
    p.add_argument("--models", default="xl,compressive,infinite,infinite_sticky")
    p.add_argument("--out", default=str(REPO / "results" / "lm_shakespeare_600steps_cpu_memory_use.json"))
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    config = {k: _relative(v) if k in ("run_root", "data", "out") else v for k, v in vars(a).items()}
    out = {"machine": machine_info(precision="fp32"), "config": config, "models": {}}
    for name in [m for m in a.models.split(",") if m]:
        model, tok, saved = load_trained_lm(Path(a.run_root) / name)
        corpus = tokenize_documents(load_corpus_split(a.data, a.split), tok)
        seg_len = saved["data"]["seg_len"]
        full = evaluate_lm(model, corpus, a.batch_size, seg_len, tok.eos_id)
        model.eval()

        def step(tokens, state, model=model, kind=model.config.memory_type):
            if kind == "xl":
                state = dataclasses.replace(state, mem_valid=state.mem_valid.clamp(max=a.stm))
            elif kind == "compressive":
                memory = dataclasses.replace(state.memory, cmem_valid=torch.zeros_like(state.cmem_valid))
                state = dataclasses.replace(state, memory=memory)
            out, state = model(tokens, state)
            return out.logits, state

        if model.config.memory_type.startswith("infinite"):
            zero_ltm_output(model)
        short = evaluate_documents(
            step, lambda b, model=model: model.init_state(b), corpus, a.batch_size, seg_len, tok.eos_id
        )
        out["models"][name] = {
            "test_ppl": full["ppl"],
            "test_ppl_short_term_only": short["ppl"],
            "gain": short["ppl"] - full["ppl"],
            "test_bpb": full["bpb"],
            "test_bpb_short_term_only": short["bpb"],
            "num_parameters": num_parameters(model.config),
        }
        print(name, json.dumps(out["models"][name]), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
