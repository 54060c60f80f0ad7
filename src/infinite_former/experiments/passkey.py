"""Passkey retrieval: a number hidden early in a long filler document, asked for at the end.

    prompt = intro + filler[:prefix] + "The pass key is 48213. Remember it. 48213 is the pass key."
             + filler[:distance] + "What is the pass key? The pass key is"

``distance`` is the number of filler tokens between the end of the passkey
sentence and the start of the question. The model reads the prompt through a
streaming API (``reset()``, ``read(ids)``, ``generate(max_new_tokens=...)``, e.g.
InfiniteGPT2Stream or GPT2WindowStream), decodes greedily, and is right when
the first number in its answer is the passkey. Accuracy is reported per
distance.

    infinite-former passkey --model DIR [--window] --distances 512 2048 8192 --out results/x.json
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from ..utils import check_int, check_output_path, config_from_dict, machine_info, write_json
from .flags import Flag, add_flags, overrides

INTRO = "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it."
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = " What is the pass key? The pass key is"


class Stream(Protocol):
    def reset(self) -> Any: ...
    def read(self, tokens: Any) -> Any: ...
    def generate(self, prompt: Any = None, max_new_tokens: int = 32, **kwargs: Any) -> torch.Tensor: ...


@dataclass
class PasskeyConfig:
    """distances: filler tokens between the passkey and the question; trials per distance;
    digits of the passkey; prefix: filler tokens before the passkey."""

    distances: tuple[int, ...] = (256, 1024, 4096)
    trials: int = 5
    digits: int = 5
    prefix: int = 64
    seed: int = 0
    filler: str = FILLER

    def __post_init__(self) -> None:
        self.distances = tuple(self.distances)
        if not self.distances:
            raise ValueError("distances must name at least one distance")
        for d in self.distances:
            check_int("distances", d, 0)
        for name in ("trials", "digits"):
            check_int(name, getattr(self, name), 1)
        check_int("prefix", self.prefix, 0)
        if not self.filler.strip():
            raise ValueError("filler must be non-empty text")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PasskeyConfig:
        return config_from_dict(cls, d)


@dataclass
class PasskeyPrompt:
    """Token ids of one prompt and where its parts are: ids[key_start:key_end] is the
    passkey sentence, ids[key_end:question_start] the `distance` filler tokens."""

    ids: list[int]
    passkey: str
    distance: int
    key_start: int
    key_end: int
    question_start: int


def filler_tokens(encode: Callable[[str], list[int]], n: int, filler: str = FILLER) -> list[int]:
    """Exactly n tokens of repeated filler text."""
    unit = list(encode(filler))
    if not unit:
        raise ValueError("the filler encodes to no tokens")
    reps = n // len(unit) + 1
    return (unit * reps)[:n]


def build_prompt(
    encode: Callable[[str], list[int]], passkey: str, distance: int, prefix: int = 64, filler: str = FILLER
) -> PasskeyPrompt:
    """The passkey prompt with exactly `distance` filler tokens between the passkey sentence and the question."""
    if not passkey.isdigit():
        raise ValueError(f"passkey must be a string of digits, got {passkey!r}")
    head = list(encode(INTRO)) + filler_tokens(encode, prefix, filler)
    key = list(encode(f" The pass key is {passkey}. Remember it. {passkey} is the pass key. "))
    gap = filler_tokens(encode, distance, filler)
    question = list(encode(QUESTION))
    ids = head + key + gap + question
    key_start = len(head)
    key_end = key_start + len(key)
    return PasskeyPrompt(ids, passkey, distance, key_start, key_end, key_end + len(gap))


def first_number(text: str) -> str | None:
    match = re.search(r"\d+", text)
    return match.group(0) if match else None


def run_passkey(
    stream: Stream,
    encode: Callable[[str], list[int]],
    decode: Callable[[Sequence[int]], str],
    config: PasskeyConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Accuracy per distance of greedy passkey retrieval: {"per_distance": {d: {...}}, "config": ...}."""
    config = config or PasskeyConfig()
    rng = random.Random(config.seed)
    answer_tokens = len(list(encode(" " + "9" * config.digits))) + 2
    per_distance: dict[str, Any] = {}
    for distance in config.distances:
        correct, answers = 0, []
        for _ in range(config.trials):
            passkey = str(rng.randrange(10 ** (config.digits - 1), 10**config.digits))
            prompt = build_prompt(encode, passkey, distance, config.prefix, config.filler)
            stream.reset()
            stream.read(torch.tensor(prompt.ids, dtype=torch.long))
            new = stream.generate(max_new_tokens=answer_tokens, do_sample=False)
            text = decode(new[0].tolist())
            ok = first_number(text) == passkey
            correct += int(ok)
            answers.append({"passkey": passkey, "answer": text, "correct": ok})
        per_distance[str(distance)] = {
            "accuracy": correct / config.trials,
            "correct": correct,
            "trials": config.trials,
            "prompt_tokens": len(prompt.ids),
            "answers": answers,
        }
        if progress:
            progress(f"distance {distance}: {correct}/{config.trials}")
    return {"config": config.to_dict(), "per_distance": per_distance}


# ----------------------------------------------------------------------------- command line

# flag -> PasskeyConfig field
PASSKEY_FLAGS: list[Flag] = [
    Flag("--distances", "distances", int, "filler tokens between the passkey and the question", nargs="+"),
    Flag("--trials", "trials", int, "prompts per distance"),
    Flag("--digits", "digits", int, "digits of the passkey"),
    Flag("--prefix", "prefix", int, "filler tokens before the passkey"),
    Flag("--seed", "seed", int, "seed of the passkeys"),
]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "passkey",
        help="passkey retrieval: GPT-2 + memory (or plain GPT-2) reads a long prompt, answers a number",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a causal LM folder, with or without memory (or hub name)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or tokenizer.json (default: --model)")
    p.add_argument("--window", action="store_true", help="plain GPT-2 with its full context window")
    add_flags(p, PASSKEY_FLAGS)
    p.add_argument("--out", default=None, help="write the results JSON here")
    p.set_defaults(func=run_passkey_command)
    return p


def load_tokenizer(path: str) -> Any:
    """A transformers tokenizer from a folder, or from a bare ``tokenizers`` file (``.json``, e.g.
    a trained byte-level BPE)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if str(path).endswith(".json"):
        return PreTrainedTokenizerFast(tokenizer_file=str(path))
    return AutoTokenizer.from_pretrained(path)


def passkey_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Run the probe the parsed flags describe; returns the results (also written to --out)."""
    from transformers import AutoModelForCausalLM

    from ..hf import GPT2WindowStream, InfiniteGPT2Stream, load_model

    config = PasskeyConfig(**overrides(args, PASSKEY_FLAGS))  # ValueError before any model is loaded
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    if args.window:
        stream: Stream = GPT2WindowStream(AutoModelForCausalLM.from_pretrained(args.model).eval())
    else:
        stream = InfiniteGPT2Stream(load_model(args.model).eval())  # any supported causal LM
    result = run_passkey(stream, tokenizer.encode, tokenizer.decode, config, progress=print)
    result.update(machine=machine_info(), model=args.model, stream=type(stream).__name__)
    if args.out:
        write_json(args.out, result)
    for d, r in result["per_distance"].items():
        print(f"distance {d:>7}: accuracy {r['accuracy']:.2f}")
    return result


def run_passkey_command(args: argparse.Namespace) -> int:
    check_output_path(args.out, "--out", folder=False)
    passkey_from_args(args)
    return 0
