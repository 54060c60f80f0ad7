"""Offline long-context probes, generated from a seed: passkey, needle-in-a-haystack, variable tracking, copy.

Every probe is built from a tokenizer's ``encode`` (text probes) or a vocabulary range (``copy``)
and a ``random.Random``; nothing is downloaded. The text probes hide what must be recalled in a
*haystack* of repeated filler sentences (the passkey test's "The grass is green. ..."), cut at
sentence boundaries, so that a prompt has exactly ``length`` tokens (prompt = head + haystack
with the needles inserted + question):

* ``passkey``: a 5-digit pass key at depth d ∈ [0, 1]; exact match of the first number answered.
* ``niah``: RULER's needle in a haystack, "One of the special magic numbers for <key> is: <value>."
  ``keys`` needles with distinct keys (one is asked for, the others are distractors at random
  depths), ``values`` values for the asked key (multi-value), keys and values as words or numbers;
  score: the fraction of the asked key's values found in the answer.
* ``vt``: RULER's variable tracking, "VAR ABCDE = 12345." then ``hops`` assignments "VAR FGHIJ = VAR
  ABCDE." spread from depth d to the end, plus ``chains - 1`` distractor chains of other values;
  score: the fraction of the chain's variables named in the answer.
* ``copy``: ``span`` random tokens, ``gap`` random tokens, the same span again. The probe scores the
  loss on the second copy (from its second token on: the first cannot be known to start a copy)
  against the same positions of the first; it needs no instruction following.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..utils import check_int

Encode = Callable[[str], Sequence[int]]

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
PASSKEY_HEAD = "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it."
PASSKEY_NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key. "
PASSKEY_QUESTION = " What is the pass key? The pass key is"
NIAH_HEAD = "Some special magic {kind} are hidden within the following text. Make sure to memorize them. I will quiz you about the {kind} afterwards."
NIAH_NEEDLE = " One of the special magic {kind} for {key} is: {value}. "
NIAH_QUESTION = " What are all the special magic {kind} for {key} mentioned in the provided text? The special magic {kind} for {key} mentioned in the provided text are"
VT_HEAD = "Memorize and track the chain(s) of variable assignment hidden in the following text."
VT_QUESTION = (
    " Question: Find all variables that are assigned the value {value} in the text above."
    " Answer: According to the chain(s) of variable assignment in the text above, {count} variables"
    " are assigned the value {value}, they are:"
)
# keys and values "as words": common concrete nouns (RULER draws from a word list too)
WORDS = (
    "apple anchor badge basket bicycle blanket bottle bucket button camera candle carpet castle "
    "chimney cloud compass cookie copper crayon crystal desert diamond dolphin dragon drum eagle "
    "engine feather fiddle forest fossil garden giraffe glacier hammer harbor helmet island jacket "
    "kettle ladder lantern lemon magnet marble meadow mirror monkey needle orange otter paddle "
    "parrot pebble pepper piano pillow planet pocket pumpkin puzzle rabbit ribbon rocket saddle "
    "scarf shovel silver spider sponge stable statue tiger tomato tunnel turtle umbrella valley "
    "violin wagon walnut whistle window wizard zebra"
).split()
KINDS = ("words", "numbers")


@dataclass(frozen=True)
class ProbeSample:
    """One prompt: ids (what the model reads), the answers it must produce (all of them), how they
    are scored ("first_number": exact match of the first number; "contains": the fraction of answers
    found in the reply), where the asked needle sits (depth, token position) and the answer budget."""

    ids: list[int]
    answers: tuple[str, ...]
    match: str
    length: int
    depth: float
    needle_position: int
    max_new_tokens: int

    def score(self, reply: str) -> float:
        """1.0 for a right reply, 0.0 for a wrong one (a fraction for several answers)."""
        if self.match == "first_number":
            found = re.search(r"\d+", reply)
            return float(found is not None and found.group(0) == self.answers[0])
        words = set(re.findall(r"\w+", reply.lower()))
        return sum(a.lower() in words for a in self.answers) / len(self.answers)


@dataclass(frozen=True)
class CopySample:
    """ids = span + gap + span; scored: positions ``second`` (targets of the second copy from its
    second token on) against ``first`` (the same tokens of the first copy)."""

    ids: list[int]
    gap: int
    first: range
    second: range


def check_depth(depth: float) -> None:
    if not (0.0 <= depth <= 1.0):
        raise ValueError(f"depth must be in [0, 1], got {depth!r}")


def _haystack(encode: Encode, n: int, filler: str) -> tuple[list[int], int]:
    """n filler tokens and the length of one filler sentence group (the unit they repeat)."""
    unit = list(encode(filler))
    if not unit:
        raise ValueError("filler must encode to at least one token")
    return (unit * (n // len(unit) + 1))[:n], len(unit)


def _compose(
    encode: Encode,
    length: int,
    head: str,
    needles: list[tuple[float, list[int]]],
    question: str,
    filler: str,
) -> tuple[list[int], list[int]]:
    """head + haystack with each (depth, needle ids) inserted at a filler boundary + question,
    exactly ``length`` tokens; returns (ids, the start of each needle in needles' order)."""
    head_ids, question_ids = list(encode(head)), list(encode(question))
    n = length - len(head_ids) - len(question_ids) - sum(len(ids) for _, ids in needles)
    if n < 0:
        raise ValueError(
            f"length {length} is too short for this probe: it needs at least {length - n} tokens"
        )
    hay, unit = _haystack(encode, n, filler)
    cuts = [_boundary(depth * n, n, unit) for depth, _ in needles]
    order = sorted(range(len(needles)), key=lambda i: (cuts[i], i))
    ids, starts, at = list(head_ids), [0] * len(needles), 0
    for i in order:
        ids += hay[at : cuts[i]]
        at = cuts[i]
        starts[i] = len(ids)
        ids += needles[i][1]
    ids += hay[at:] + question_ids
    assert len(ids) == length
    return ids, starts


def _boundary(at: float, n: int, unit: int) -> int:
    """The filler boundary (a multiple of unit, or the end n) nearest to token position ``at``."""
    cut = min(round(at / unit) * unit, n)
    return n if abs(n - at) <= abs(cut - at) else cut


def passkey_sample(
    encode: Encode, rng: random.Random, length: int, depth: float, digits: int = 5, filler: str = FILLER
) -> ProbeSample:
    """The passkey prompt of ``length`` tokens with the pass key at ``depth`` of the haystack."""
    check_int("length", length)
    check_depth(depth)
    check_int("digits", digits)
    key = str(rng.randrange(10 ** (digits - 1), 10**digits))
    needle = list(encode(PASSKEY_NEEDLE.format(key=key)))
    ids, (start,) = _compose(encode, length, PASSKEY_HEAD, [(depth, needle)], PASSKEY_QUESTION, filler)
    return ProbeSample(ids, (key,), "first_number", length, depth, start, len(encode(" " + key)) + 2)


def _draw(rng: random.Random, kind: str, count: int, digits: int = 7) -> list[str]:
    """count distinct words (kind "words") or numbers of ``digits`` digits."""
    if kind == "words":
        if count > len(WORDS):
            raise ValueError(f"at most {len(WORDS)} distinct words, asked for {count}")
        return rng.sample(WORDS, count)
    if kind != "numbers":
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return [str(n) for n in rng.sample(range(10 ** (digits - 1), 10**digits), count)]


def niah_sample(
    encode: Encode,
    rng: random.Random,
    length: int,
    depth: float,
    keys: int = 1,
    values: int = 1,
    key_kind: str = "words",
    value_kind: str = "numbers",
    filler: str = FILLER,
) -> ProbeSample:
    """RULER needle in a haystack: the asked key's ``values`` needles at ``depth`` (one after the
    other), ``keys - 1`` distractor needles (other keys, one value each) at random depths."""
    check_int("length", length)
    check_depth(depth)
    check_int("keys", keys)
    check_int("values", values)
    names = _draw(rng, key_kind, keys, digits=6)
    answers = _draw(rng, value_kind, values + keys - 1)
    kind = "numbers" if value_kind == "numbers" else "words"
    needle = [
        t for v in answers[:values] for t in encode(NIAH_NEEDLE.format(kind=kind, key=names[0], value=v))
    ]
    needles = [(depth, needle)] + [
        (rng.random(), list(encode(NIAH_NEEDLE.format(kind=kind, key=name, value=v))))
        for name, v in zip(names[1:], answers[values:], strict=True)
    ]
    question = NIAH_QUESTION.format(kind=kind, key=names[0])
    ids, starts = _compose(encode, length, NIAH_HEAD.format(kind=kind), needles, question, filler)
    budget = len(encode(" " + ", ".join(answers[:values]))) + 4
    return ProbeSample(ids, tuple(answers[:values]), "contains", length, depth, starts[0], budget)


def vt_sample(
    encode: Encode,
    rng: random.Random,
    length: int,
    depth: float,
    hops: int = 4,
    chains: int = 1,
    filler: str = FILLER,
) -> ProbeSample:
    """RULER variable tracking: a chain "VAR A = v", "VAR B = VAR A", ... (``hops`` assignments)
    spread evenly from ``depth`` to the end of the haystack, and ``chains - 1`` distractor chains of
    other values at random depths. The answer: the chain's ``hops + 1`` variable names."""
    check_int("length", length)
    check_depth(depth)
    check_int("hops", hops)
    check_int("chains", chains)
    letters = string.ascii_uppercase
    names: set[str] = set()
    while len(names) < chains * (hops + 1):
        names.add("".join(rng.choice(letters) for _ in range(5)))
    order = sorted(names)
    rng.shuffle(order)
    values = _draw(rng, "numbers", chains, digits=5)
    needles = []
    for c in range(chains):
        chain = order[c * (hops + 1) : (c + 1) * (hops + 1)]
        first = depth if c == 0 else rng.random()
        statements = [f" VAR {chain[0]} = {values[c]}. "] + [
            f" VAR {b} = VAR {a}. " for a, b in zip(chain[:-1], chain[1:], strict=True)
        ]
        for i, text in enumerate(statements):
            needles.append((first + (1.0 - first) * i / (hops + 1), list(encode(text))))
    question = VT_QUESTION.format(value=values[0], count=hops + 1)
    ids, starts = _compose(encode, length, VT_HEAD, needles, question, filler)
    answers = tuple(order[: hops + 1])
    return ProbeSample(
        ids, answers, "contains", length, depth, starts[0], len(encode(" " + ", ".join(answers))) + 4
    )


def copy_sample(rng: random.Random, low: int, high: int, span: int, gap: int) -> CopySample:
    """Random tokens in [low, high): span, gap, the span again."""
    check_int("span", span, minimum=2)
    check_int("gap", gap, minimum=0)
    if not (0 <= low < high):
        raise ValueError(f"token range must have 0 <= low < high, got [{low}, {high})")
    tokens = [rng.randrange(low, high) for _ in range(2 * span + gap)]
    ids = tokens[:span] + tokens[span : span + gap] + tokens[:span]
    second = span + gap
    # targets of positions i are ids[i]; the first token of each copy is not scored
    return CopySample(ids, gap, range(1, span), range(second + 1, second + span))


TEXT_PROBES = {"passkey": passkey_sample, "niah": niah_sample, "vt": vt_sample}

__all__ = [
    "FILLER",
    "KINDS",
    "TEXT_PROBES",
    "WORDS",
    "CopySample",
    "ProbeSample",
    "copy_sample",
    "niah_sample",
    "passkey_sample",
    "vt_sample",
]
