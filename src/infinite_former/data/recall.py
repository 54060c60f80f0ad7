"""Recall at a controlled distance D: what a memory gives back of content D tokens ago.

Two tasks over one vocabulary (content symbols 0..7, filler symbols 8..15, MARK = 16, SEP = 17,
PAD = 18; vocab_size = 19). The answer depends only on content that ends D tokens before the query.

**gist** (a sorting-like summary). A signal segment of G = ``signal_len`` tokens over the 4 symbols
0..3, drawn i.i.d. from the weights (8, 4, 2, 1)/15 given to the symbols in a random order (the
segment is redrawn until all 4 symbols occur), then D filler tokens uniform over 8..15, then SEP.
Answer: the 4 symbols by descending count in the segment, ties by first occurrence::

    [s_1 … s_G, f_1 … f_D, SEP] -> [y_1 y_2 y_3 y_4]

Chance: by symmetry every order of the 4 symbols is equally likely a priori, so without the
segment the best teacher-forced guess at answer position k is uniform over the 4 − k symbols not
yet given: mean accuracy (1/4 + 1/3 + 1/2 + 1)/4 = 0.521 (``chance_accuracy``).

**verbatim** (a key-value lookup). [MARK k_1 k_2 v_1 v_2]: a key of 2 and a value of 2 content
symbols (0..7), then D tokens of filler in which every ``distractor_every`` tokens hold one
distractor pair [MARK k' v'] with another key, then the query [SEP k_1 k_2]. Answer: v_1 v_2.
Chance: 1/8 per answer token (``chance_accuracy`` = 0.125).

The distance D counts the tokens between the end of the signal segment / target pair and the
first query token.

Split isolation: the answer-bearing item (the gist's signal segment, the verbatim (key, value)
pair, distractors included) is hashed; items with hash ≡ 0 (mod 4) occur only in valid/test
sequences, the others only in train sequences, so no test item was seen in training. Each
sequence is a pure function of (seed, split, task, D, index): seeded and reproducible.

The sources plug into ``SortingStream`` (left-padded segments, loss on the answer only, the
answer in the last segment): their config exposes ``length`` (input position of the last query
token), ``full_length``, ``pad_id`` and ``num_symbols`` (the answer's length, which must fit in a
segment).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..utils import check_int
from .sorting import SPLITS, _as_indices

TASKS = ("gist", "verbatim")
NUM_CONTENT = 8  # content symbols 0..7 (the gist uses 0..3)
GIST_SYMBOLS = 4
GIST_WEIGHTS = np.array([8.0, 4.0, 2.0, 1.0]) / 15.0
FILLER = np.arange(8, 16)
MARK, SEP, PAD = 16, 17, 18
VOCAB_SIZE = 19
KEY_LEN = VALUE_LEN = 2
TEST_BUCKET = 0  # items with hash % 4 == TEST_BUCKET are held out for valid/test


@dataclass(frozen=True)
class RecallConfig:
    """One family of recall sequences at distance D (see the module doc)."""

    task: str
    distance: int  # D
    seed: int = 0
    split: str = "train"
    signal_len: int = 32  # G, gist only
    distractor_every: int = 64  # verbatim only: one distractor pair per this many filler tokens

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, got {self.task!r}")
        check_int("distance", self.distance, 0, symbol="D")
        check_int("seed", self.seed, 0)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {self.split!r}")
        check_int("signal_len", self.signal_len, GIST_SYMBOLS, symbol="G")
        check_int("distractor_every", self.distractor_every, 8)

    @property
    def answer_len(self) -> int:
        return GIST_SYMBOLS if self.task == "gist" else VALUE_LEN

    @property
    def num_symbols(self) -> int:
        """The answer's length (SortingStream's name: it checks that the answer fits a segment)."""
        return self.answer_len

    @property
    def prefix_len(self) -> int:
        """Tokens of the signal segment / target pair."""
        return self.signal_len if self.task == "gist" else 1 + KEY_LEN + VALUE_LEN

    @property
    def query_len(self) -> int:
        return 1 if self.task == "gist" else 1 + KEY_LEN

    @property
    def length(self) -> int:
        """Input position of the last query token (the answer starts right after it)."""
        return self.prefix_len + self.distance + self.query_len - 1

    @property
    def full_length(self) -> int:
        return self.length + 1 + self.answer_len

    @property
    def pad_id(self) -> int:
        return PAD

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def chance_accuracy(self) -> float:
        """Mean answer-token accuracy (teacher forcing) of the best guess without the signal."""
        if self.task == "gist":
            return float(np.mean([1.0 / (GIST_SYMBOLS - k) for k in range(GIST_SYMBOLS)]))
        return 1.0 / NUM_CONTENT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def item_bucket(item: np.ndarray) -> int:
    """hash(item) mod 4 (blake2b of the token bytes): bucket TEST_BUCKET is held out."""
    digest = hashlib.blake2b(np.asarray(item, dtype=np.uint8).tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 4


def _draw_item(rng: np.random.Generator, draw, held_out: bool) -> np.ndarray:
    """Draw items until one falls in the split's buckets (test: bucket 0; train: the rest)."""
    while True:
        item = draw(rng)
        if (item_bucket(item) == TEST_BUCKET) == held_out:
            return item


def _gist_segment(rng: np.random.Generator, length: int) -> np.ndarray:
    while True:
        weights = GIST_WEIGHTS[rng.permutation(GIST_SYMBOLS)]
        seg = rng.choice(GIST_SYMBOLS, size=length, p=weights)
        if len(np.unique(seg)) == GIST_SYMBOLS:
            return seg


def gist_answer(segment: np.ndarray) -> np.ndarray:
    """The 4 symbols by descending count in ``segment``, ties by first occurrence: (4,)."""
    counts = np.bincount(segment, minlength=GIST_SYMBOLS)
    first = np.array([np.flatnonzero(segment == s)[0] if counts[s] else len(segment) for s in range(4)])
    return np.lexsort((first, -counts))  # primary: -count, then first occurrence


def _pair(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, NUM_CONTENT, size=KEY_LEN + VALUE_LEN)


def make_sequence(cfg: RecallConfig, index: int) -> np.ndarray:
    """The full sequence f (prefix, filler, query, answer) of one index: (full_length,) uint8."""
    rng = np.random.default_rng([cfg.seed, SPLITS[cfg.split], TASKS.index(cfg.task), cfg.distance, index])
    held_out = cfg.split != "train"
    filler = rng.choice(FILLER, size=cfg.distance).astype(np.int64)
    if cfg.task == "gist":
        seg = _draw_item(rng, lambda r: _gist_segment(r, cfg.signal_len), held_out)
        parts = [seg, filler, [SEP], gist_answer(seg)]
    else:
        pair = _draw_item(rng, _pair, held_out)
        key, value = pair[:KEY_LEN], pair[KEY_LEN:]
        chunk = cfg.distractor_every
        for lo in range(0, cfg.distance - chunk + 1, chunk):  # one distractor per full chunk
            while True:
                other = _draw_item(rng, _pair, held_out)
                if not np.array_equal(other[:KEY_LEN], key):
                    break
            at = lo + int(rng.integers(0, chunk - len(other)))
            filler[at : at + 1 + len(other)] = np.concatenate([[MARK], other])
        parts = [[MARK], pair, filler, [SEP], key, value]
    f = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]).astype(np.uint8)
    assert f.shape == (cfg.full_length,)
    return f


class RecallGenerator:
    """Random access to windows of recall sequences (the SortingStream source protocol).

    A batch of indices is materialised once and kept until other indices are read.
    """

    def __init__(self, config: RecallConfig) -> None:
        self.config = config
        self._cache: tuple[bytes, np.ndarray] | None = None

    def __len__(self) -> int:
        return 2**62

    def sequences(self, indices: Any) -> np.ndarray:
        """The full sequences: (b, full_length) uint8."""
        indices = _as_indices(indices)
        key = indices.tobytes()
        if self._cache is None or self._cache[0] != key:
            rows = [make_sequence(self.config, int(i)) for i in indices]
            self._cache = (key, np.stack(rows) if rows else np.zeros((0, self.config.full_length), np.uint8))
        return self._cache[1]

    def read(self, indices: Any, start: int, stop: int) -> np.ndarray:
        if not (0 <= start <= stop <= self.config.full_length):
            raise ValueError(f"need 0 <= start <= stop <= {self.config.full_length}, got ({start}, {stop})")
        return self.sequences(indices)[:, start:stop]


__all__ = [
    "MARK",
    "PAD",
    "SEP",
    "TASKS",
    "VOCAB_SIZE",
    "RecallConfig",
    "RecallGenerator",
    "gist_answer",
    "item_bucket",
    "make_sequence",
]
