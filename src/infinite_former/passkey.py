"""Passkey retrieval: a number hidden early in a long filler document, asked for at the end.

    prompt = intro + filler[:prefix] + "The pass key is 48213. Remember it. 48213 is the pass key."
             + filler[:distance] + "What is the pass key? The pass key is"

``distance`` is the number of filler tokens between the end of the passkey
sentence and the start of the question. The model reads the prompt through a
streaming API (``reset()``, ``read(ids)``, ``generate(max_new_tokens=...)``, e.g.
InfiniteGPT2Stream or GPT2WindowStream), decodes greedily, and is right when
the first number in its answer is the passkey. Accuracy is reported per
distance.

    python -m infinite_former.passkey --model DIR [--window] --distances 512 2048 8192 --out results/x.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

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
        if not self.distances or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in self.distances
        ):
            raise ValueError(f"distances must be non-negative ints, got {self.distances!r}")
        for name in ("trials", "digits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(self.prefix, bool) or not isinstance(self.prefix, int) or self.prefix < 0:
            raise ValueError(f"prefix must be an int >= 0, got {self.prefix!r}")
        if not self.filler.strip():
            raise ValueError("filler must be non-empty text")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PasskeyConfig:
        return cls(**d)


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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from transformers import AutoTokenizer, GPT2LMHeadModel, PreTrainedTokenizerFast

    from .hf import GPT2WindowStream, InfiniteGPT2LMHeadModel, InfiniteGPT2Stream
    from .utils import machine_info

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="GPT-2 or GPT-2 + memory folder (or hub name online)")
    parser.add_argument(
        "--tokenizer", default=None, help="tokenizer folder or tokenizer.json (default: --model)"
    )
    parser.add_argument("--window", action="store_true", help="plain GPT-2 with its full context window")
    parser.add_argument("--distances", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--digits", type=int, default=5)
    parser.add_argument("--prefix", type=int, default=64, help="filler tokens before the passkey")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results JSON here")
    args = parser.parse_args(argv)
    tokenizer_path = args.tokenizer or args.model
    if str(tokenizer_path).endswith(".json"):  # a bare `tokenizers` file (e.g. a trained byte-level BPE)
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=tokenizer_path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if args.window:
        stream: Stream = GPT2WindowStream(GPT2LMHeadModel.from_pretrained(args.model).eval())
    else:
        stream = InfiniteGPT2Stream(InfiniteGPT2LMHeadModel.from_pretrained(args.model).eval())
    config = PasskeyConfig(tuple(args.distances), args.trials, args.digits, args.prefix, seed=args.seed)
    result = run_passkey(stream, tokenizer.encode, tokenizer.decode, config, progress=print)
    result.update(machine=machine_info(), model=args.model, stream=type(stream).__name__)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    for d, r in result["per_distance"].items():
        print(f"distance {d:>7}: accuracy {r['accuracy']:.2f}")
    return result


if __name__ == "__main__":
    main()
