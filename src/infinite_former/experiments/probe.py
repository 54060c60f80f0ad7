"""``infinite-former probe passkey|niah|vt|copy --model DIR``: offline long-context probes for any causal LM.

The prompts come from ``data/probes.py`` (seeded, no downloads). A model with memory (a folder
saved with one, or any causal LM, which ``load_model`` gives a fresh memory) reads a prompt of
any length through ``MemoryStream`` and answers greedily; ``--no-memory`` loads the plain
model, which reads the whole prompt in one window: a length beyond its positions is refused,
naming the limit. ``copy`` scores the loss on a repeated random span against the gap before it
(no instruction following needed), the others score the greedy answer over a length × depth grid.

    infinite-former probe passkey --model DIR --lengths 512,2k,8k --depths 0,0.5,1 --out passkey.json
    infinite-former probe niah --model DIR --keys 4 --values 2 --png niah.png --out niah.json
    infinite-former probe copy --model DIR --gaps 0,256,1k,4k --span 32 --out copy.json
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.probes import KINDS, TEXT_PROBES, ProbeSample, copy_sample
from ..utils import check_int, config_from_dict, machine_info, write_json
from .flags import Flag, add_flags, float_list, int_list, overrides

TASKS = (*TEXT_PROBES, "copy")
POSITION_FIELDS = ("max_position_embeddings", "n_positions", "n_ctx")


@dataclass
class ProbeConfig:
    """task; lengths (prompt tokens) × depths (of the asked needle) × trials for the text probes;
    gaps × trials with span tokens for copy; keys/values/key_kind/value_kind (niah), hops/chains
    (vt); token_range [low, high) of copy's random tokens (None: the whole vocabulary)."""

    task: str = "passkey"
    lengths: tuple[int, ...] = (256, 1024)
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    gaps: tuple[int, ...] = (0, 64, 256, 1024)
    span: int = 32
    trials: int = 3
    seed: int = 0
    keys: int = 1
    values: int = 1
    key_kind: str = "words"
    value_kind: str = "numbers"
    hops: int = 4
    chains: int = 1
    token_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        self.lengths, self.depths, self.gaps = tuple(self.lengths), tuple(self.depths), tuple(self.gaps)
        for name in ("lengths", "depths", "gaps"):
            if not getattr(self, name):
                raise ValueError(f"{name} must hold at least one value")
        for length in self.lengths:
            check_int("lengths", length)
        for gap in self.gaps:
            check_int("gaps", gap, minimum=0)
        for depth in self.depths:
            if not (0.0 <= depth <= 1.0):
                raise ValueError(f"depths must be in [0, 1], got {depth!r}")
        for name in ("trials", "keys", "values", "hops", "chains"):
            check_int(name, getattr(self, name))
        check_int("span", self.span, minimum=2)
        for name in ("key_kind", "value_kind"):
            if getattr(self, name) not in KINDS:
                raise ValueError(f"{name} must be one of {KINDS}, got {getattr(self, name)!r}")
        if self.token_range is not None:
            self.token_range = tuple(self.token_range)
            if len(self.token_range) != 2 or not 0 <= self.token_range[0] < self.token_range[1]:
                raise ValueError(
                    f"token_range must be (low, high) with 0 <= low < high, got {self.token_range!r}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeConfig:
        return config_from_dict(cls, d)


# ----------------------------------------------------------------------------- the model side


def context_limit(model: nn.Module) -> tuple[int, str] | None:
    """(positions, config field) of a model without memory; None for one with memory (any length)."""
    from ..hf import MemoryCausalLM

    if isinstance(model, MemoryCausalLM):
        return None
    config = model.config.get_text_config(decoder=True)
    for name in POSITION_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value, name
    return None


def check_length(model: nn.Module, tokens: int, what: str) -> None:
    """ValueError when a model without memory cannot take ``tokens`` tokens in its window."""
    limit = context_limit(model)
    if limit is not None and tokens > limit[0]:
        raise ValueError(
            f"{what} needs {tokens} tokens, beyond the {limit[0]} positions of {type(model).__name__} "
            f"without memory (config.{limit[1]}); a model with memory (add_memory, or no --no-memory) reads any length"
        )


@torch.no_grad()
def greedy_reply(model: nn.Module, ids: Sequence[int], max_new_tokens: int) -> list[int]:
    """The greedy continuation of ids: through the memory's stream, or in the plain model's window."""
    from ..hf import MemoryCausalLM, MemoryStream

    x = torch.tensor([list(ids)], dtype=torch.long, device=model.device)
    pad = model.generation_config.eos_token_id
    pad = (pad[0] if isinstance(pad, list) else pad) if pad is not None else 0
    if isinstance(model, MemoryCausalLM):
        stream = MemoryStream(model).read(x)
        return stream.generate(max_new_tokens=max_new_tokens, pad_token_id=pad)[0].tolist()
    out = model.generate(
        x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
    )
    return out[0, x.shape[1] :].tolist()


@torch.no_grad()
def token_nll(model: nn.Module, ids: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, right) of predicting ids[i] from ids[:i], i >= 1: (T - 1,) each (one call, any length
    with memory)."""
    x = torch.tensor([list(ids)], dtype=torch.long, device=model.device)
    logits = model(x).logits[0, :-1].float()  # (T - 1, vocab)
    target = x[0, 1:]
    return F.cross_entropy(logits, target, reduction="none"), logits.argmax(-1) == target


# ----------------------------------------------------------------------------- probes


def text_samples(config: ProbeConfig, encode: Callable[[str], Sequence[int]]) -> list[ProbeSample]:
    """The length × depth × trials prompts of a text probe, from config.seed."""
    rng = random.Random(config.seed)
    options: dict[str, Any] = {}
    if config.task == "niah":
        options = dict(
            keys=config.keys, values=config.values, key_kind=config.key_kind, value_kind=config.value_kind
        )
    elif config.task == "vt":
        options = dict(hops=config.hops, chains=config.chains)
    make = TEXT_PROBES[config.task]
    return [
        make(encode, rng, length, depth, **options)
        for length in config.lengths
        for depth in config.depths
        for _ in range(config.trials)
    ]


def run_text_probe(
    model: nn.Module,
    config: ProbeConfig,
    encode: Callable[[str], Sequence[int]],
    decode: Callable[[Sequence[int]], str],
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Mean score per (length, depth), per length, per depth and overall, with every reply."""
    samples = text_samples(config, encode)
    for s in samples:  # before any model call
        check_length(model, s.length + s.max_new_tokens, f"{config.task} at length {s.length}")
    cells: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for i, sample in enumerate(samples):
        torch.manual_seed(config.seed + i)  # sticky sampling draws random numbers
        reply = decode(greedy_reply(model, sample.ids, sample.max_new_tokens))
        cells.setdefault((sample.length, sample.depth), []).append(
            {"answers": list(sample.answers), "reply": reply, "score": sample.score(reply)}
        )
    grid = [
        {"length": length, "depth": depth, "score": _mean([t["score"] for t in trials]), "trials": trials}
        for (length, depth), trials in cells.items()
    ]
    if progress:
        for cell in grid:
            progress(f"length {cell['length']:>6} depth {cell['depth']:.2f}: {cell['score']:.2f}")
    return {
        "task": config.task,
        "grid": grid,
        "by_length": {str(n): _mean([c["score"] for c in grid if c["length"] == n]) for n in config.lengths},
        "by_depth": {str(d): _mean([c["score"] for c in grid if c["depth"] == d]) for d in config.depths},
        "score": _mean([c["score"] for c in grid]),
    }


def run_copy_probe(
    model: nn.Module, config: ProbeConfig, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Per gap D: mean NLL and top-1 accuracy on the second copy of the span vs the first copy (and the
    second copy's NLL per trial: the same samples for every model with the same seed)."""
    low, high = config.token_range or (0, model.config.get_text_config(decoder=True).vocab_size)
    for gap in config.gaps:
        check_length(model, 2 * config.span + gap, f"copy with gap {gap}")
    rng = random.Random(config.seed)
    per_gap = {}
    for gap in config.gaps:
        rows = []
        for t in range(config.trials):
            sample = copy_sample(rng, low, high, config.span, gap)
            torch.manual_seed(config.seed + t)
            nll, right = token_nll(model, sample.ids)
            first, second = (
                [i - 1 for i in sample.first],
                [i - 1 for i in sample.second],
            )  # target i at row i - 1
            rows.append([nll[second].mean(), nll[first].mean(), right[second].float().mean()])
        second_nll, first_nll, accuracy = torch.tensor(rows).mean(0).tolist()
        per_gap[str(gap)] = {
            "nll_second_copy": second_nll,
            "nll_first_copy": first_nll,
            "accuracy_second_copy": accuracy,
            "nll_second_copy_trials": [float(r[0]) for r in rows],  # per sample (same seed: pairable)
        }
        if progress:
            progress(
                f"gap {gap:>6}: NLL second copy {second_nll:.3f} (first {first_nll:.3f}), accuracy {accuracy:.2f}"
            )
    return {"task": "copy", "token_range": [low, high], "per_gap": per_gap}


def run_probe(
    model: nn.Module,
    config: ProbeConfig,
    encode: Callable[[str], Sequence[int]] | None = None,
    decode: Callable[[Sequence[int]], str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run config.task on the model; text probes need the tokenizer's encode/decode."""
    if config.task == "copy":
        result = run_copy_probe(model, config, progress)
    else:
        if encode is None or decode is None:
            raise ValueError(f"the {config.task} probe needs a tokenizer (encode and decode)")
        result = run_text_probe(model, config, encode, decode, progress)
    limit = context_limit(model)
    return {
        **result,
        "config": config.to_dict(),
        "memory": limit is None,
        "context_limit": limit and limit[0],
    }


def plot_probe(result: dict[str, Any], path: str | Path) -> Path:
    """Text probes: the length × depth heat map of the score; copy: NLL of both copies against the gap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    if result["task"] == "copy":
        gaps = [int(g) for g in result["per_gap"]]
        for key, label in (("nll_second_copy", "second copy"), ("nll_first_copy", "first copy")):
            ax.plot(gaps, [result["per_gap"][str(g)][key] for g in gaps], marker="o", label=label)
        ax.set(xlabel="gap D (tokens)", ylabel="NLL (nats/token)", title="copy: loss on the repeated span")
        ax.legend()
    else:
        lengths = sorted({c["length"] for c in result["grid"]})
        depths = sorted({c["depth"] for c in result["grid"]})
        score = {(c["length"], c["depth"]): c["score"] for c in result["grid"]}
        grid = [[score[(n, d)] for n in lengths] for d in depths]
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
        ax.set(xlabel="context length (tokens)", ylabel="needle depth", title=f"{result['task']}: score")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


# ----------------------------------------------------------------------------- command line

PROBE_FLAGS: list[Flag] = [
    Flag("--lengths", "lengths", int_list, "prompt lengths in tokens, e.g. 512,2k,8k (text probes)"),
    Flag("--depths", "depths", float_list, "needle depths in [0, 1], e.g. 0,0.5,1 (text probes)"),
    Flag("--gaps", "gaps", int_list, "tokens between the two copies (copy)"),
    Flag("--span", "span", int, "tokens of the copied span (copy)"),
    Flag("--trials", "trials", int, "prompts per grid cell"),
    Flag("--seed", "seed", int, "seed of the prompts"),
    Flag("--keys", "keys", int, "needles with distinct keys, one asked (niah)"),
    Flag("--values", "values", int, "values of the asked key (niah)"),
    Flag("--key-kind", "key_kind", str, "keys as words or numbers (niah)", choices=KINDS),
    Flag("--value-kind", "value_kind", str, "values as words or numbers (niah)", choices=KINDS),
    Flag("--hops", "hops", int, "assignments per chain (vt)"),
    Flag("--chains", "chains", int, "chains, one asked (vt)"),
    Flag("--token-range", "token_range", int_list, "LOW,HIGH ids of copy's random tokens (default: all)"),
]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "probe",
        help="offline long-context probes (passkey, niah, vt, copy) for any causal LM",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("task", choices=TASKS)
    p.add_argument("--model", required=True, help="a causal LM folder, with or without memory")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or tokenizer.json (default: --model)")
    p.add_argument(
        "--no-memory", action="store_true", help="the plain model (lengths limited to its positions)"
    )
    p.add_argument(
        "--block-size", type=int, default=None, help="block size of a memory added to a plain folder"
    )
    p.add_argument(
        "--training-free",
        default=None,
        metavar="DENSITY[:ALPHA|:softmax]",
        help="add a training-free memory (e.g. gibbs:0.5, gaussian:0.5, gibbs:softmax) to a plain folder",
    )
    add_flags(p, PROBE_FLAGS)
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.add_argument("--png", default=None, help="write the heat map (text probes) / NLL plot (copy) here")
    p.set_defaults(func=run_probe_command)
    return p


def probe_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Run the probe the parsed flags describe; returns the results (also written to --out)."""
    from transformers import AutoModelForCausalLM

    from ..hf import add_memory, load_model
    from ..hf.training_free import TrainingFreeConfig
    from .passkey import load_tokenizer

    config = ProbeConfig(task=args.task, **overrides(args, PROBE_FLAGS))  # ValueError before loading
    encode = decode = None
    if config.task != "copy":
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        encode, decode = tokenizer.encode, tokenizer.decode
    if args.no_memory and args.training_free:
        raise ValueError("--no-memory and --training-free exclude each other")
    memory = {} if args.block_size is None else {"block_size": args.block_size}
    if args.no_memory:
        model = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True)
    elif args.training_free:
        free = TrainingFreeConfig.parse(args.training_free)
        plain = AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True)
        model = add_memory(plain, training_free=free, **memory)
    else:
        model = load_model(args.model, local_files_only=True, **memory)
    result = run_probe(model.eval(), config, encode, decode, progress=print)
    result.update(
        model=args.model,
        model_class=type(model).__name__,
        training_free=args.training_free,
        machine=machine_info(),
    )
    if args.out:
        write_json(args.out, result)
    if args.png:
        plot_probe(result, args.png)
    return result


def run_probe_command(args: argparse.Namespace) -> int:
    probe_from_args(args)
    return 0
