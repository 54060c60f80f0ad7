"""The sorting task (paper §5): count symbols over a long sequence, emit them sorted.

A sequence of ``length`` tokens over V symbols (V = 20 in the paper): token j
is drawn from p = (1 − r)·p_start + r·p_end with r = j / length, where p_start
and p_end hold random integers 1..9 per symbol, normalised. After it come a
separator and the target: the V symbols sorted by descending count over the
whole sequence (ties, including unseen symbols with count 0: the smaller
symbol id first). The full sequence is

    f = [x_0 … x_{n−1}, SEP, y_0 … y_{V−1}]          (n + 1 + V tokens)

Randomness is counter-based (splitmix64 of (seed, split, sequence index,
position)), so any window of any sequence is a pure function of its address:
sequences can be streamed segment by segment, batches resumed from an index,
and nothing has to be materialised. ``save_sequences`` / ``load_sequences``
write and read the same sequences as a uint8 ``.npy`` file (memory-mapped on
load).

LM framing: inputs = f[:-1], targets = f[1:]; the loss mask keeps only the V
answer positions (inputs SEP, y_0 … y_{V−2}). The inputs are left-padded with
PAD to a multiple of the segment length S, so the answer sits at the end of
the last segment; pads are masked. ``SortingStream`` yields those segments as
``Segment``s: ``reset`` on the first segment of a sequence, ``train`` only on
the last one (only it back-propagates, as in the paper).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..utils import check_int, config_from_dict, write_json
from .segments import Segment, Shard

SPLITS = {"train": 0, "valid": 1, "test": 2}
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_CHUNK = 4096  # positions generated at a time when counting a whole sequence


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SortingConfig:
    """One family of sorting sequences.

    num_symbols: V (20 in the paper). length: n, tokens before the separator.
    seed and split (train | valid | test) select disjoint, reproducible streams.
    Token ids: symbols 0..V−1, SEP = V, PAD = V + 1 (vocab_size = V + 2).
    """

    length: int
    num_symbols: int = 20
    seed: int = 0
    split: str = "train"

    def __post_init__(self) -> None:
        check_int("length", self.length, 1)
        check_int("num_symbols", self.num_symbols, 2)
        if self.num_symbols > 254:
            raise ValueError(f"num_symbols must be <= 254 (uint8 tokens), got {self.num_symbols}")
        check_int("seed", self.seed, 0)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {self.split!r}")

    @property
    def sep_id(self) -> int:
        return self.num_symbols

    @property
    def pad_id(self) -> int:
        return self.num_symbols + 1

    @property
    def vocab_size(self) -> int:
        return self.num_symbols + 2

    @property
    def full_length(self) -> int:
        """len(f) = n + 1 + V."""
        return self.length + 1 + self.num_symbols

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SortingConfig:
        return config_from_dict(cls, d)


# ------------------------------------------------------------------- counter-based RNG


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (x.astype(np.uint64) + _GOLDEN) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def _sequence_keys(cfg: SortingConfig, indices: np.ndarray) -> np.ndarray:
    """One 64-bit key per sequence: a pure function of (seed, split, index)."""
    base = _splitmix64(np.array([cfg.seed * 8 + SPLITS[cfg.split]], dtype=np.uint64))
    with np.errstate(over="ignore"):
        return _splitmix64(base ^ indices.astype(np.uint64))


def _hash_stream(keys: np.ndarray, counters: np.ndarray, salt: int) -> np.ndarray:
    """(b,) keys × (m,) counters -> (b, m) uint64 hashes."""
    with np.errstate(over="ignore"):
        salted = _splitmix64(keys ^ np.uint64(salt))
        return _splitmix64(salted[:, None] + counters.astype(np.uint64)[None, :] * _GOLDEN)


def _uniforms(keys: np.ndarray, start: int, stop: int) -> np.ndarray:
    """U[0, 1) for positions start..stop−1 of each sequence: (b, stop − start) float64."""
    h = _hash_stream(keys, np.arange(start, stop, dtype=np.uint64), salt=0x5EED)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def symbol_weights(cfg: SortingConfig, indices: np.ndarray) -> np.ndarray:
    """The random integers 1..9 per symbol behind p_start and p_end: (b, 2, V) int64."""
    v = cfg.num_symbols
    h = _hash_stream(
        _sequence_keys(cfg, _as_indices(indices)), np.arange(2 * v, dtype=np.uint64), salt=0xD157
    )
    return (h % np.uint64(9)).astype(np.int64).reshape(-1, 2, v) + 1


def symbol_distributions(cfg: SortingConfig, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p_start, p_end: (b, V) float64, the weights 1..9 per symbol, normalised."""
    weights = symbol_weights(cfg, indices).astype(np.float64)
    probs = weights / weights.sum(-1, keepdims=True)
    return probs[:, 0], probs[:, 1]


def sequence_tokens(cfg: SortingConfig, indices: np.ndarray, start: int, stop: int) -> np.ndarray:
    """x_start … x_{stop−1} of each sequence in indices: (b, stop − start) uint8.

    Token j ~ p = (1 − r)·p_start + r·p_end, r = j / n, by inverse CDF.
    """
    indices = _as_indices(indices)
    if not (0 <= start <= stop <= cfg.length):
        raise ValueError(f"need 0 <= start <= stop <= length={cfg.length}, got start={start}, stop={stop}")
    p_start, p_end = symbol_distributions(cfg, indices)  # (b, V)
    r = np.arange(start, stop, dtype=np.float64) / cfg.length  # (m,)
    # The CDF of a mixture is the mixture of the CDFs: (1 − r)·C_start + r·C_end.
    c_start, c_end = np.cumsum(p_start, -1), np.cumsum(p_end, -1)  # (b, V)
    cdf = c_start[:, None, :] + r[None, :, None] * (c_end - c_start)[:, None, :]  # (b, m, V)
    u = _uniforms(_sequence_keys(cfg, indices), start, stop) * cdf[..., -1]
    tokens = (u[..., None] >= cdf[..., :-1]).sum(-1)
    return tokens.astype(np.uint8)


def symbol_counts(tokens: np.ndarray, num_symbols: int) -> np.ndarray:
    """Per-row symbol counts: (b, m) -> (b, V) int64, without a loop over rows."""
    b = tokens.shape[0]
    offsets = tokens.astype(np.int64) + num_symbols * np.arange(b, dtype=np.int64)[:, None]
    return np.bincount(offsets.ravel(), minlength=b * num_symbols).reshape(b, num_symbols)


def sort_by_count(counts: np.ndarray) -> np.ndarray:
    """The target: symbols by descending count, ties by smaller id. (b, V) -> (b, V) uint8."""
    # A stable sort of −count keeps ascending ids among equal counts.
    return np.argsort(-counts, axis=-1, kind="stable").astype(np.uint8)


def _as_indices(indices: Any) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or (idx.size and idx.min() < 0):
        raise ValueError(f"indices must be a 1-d array of non-negative ints, got {indices!r}")
    return idx.astype(np.int64)


# ------------------------------------------------------------------------- sources


class SequenceSource(Protocol):
    """Random access to windows of the full sequences f (n + 1 + V tokens)."""

    config: SortingConfig

    def __len__(self) -> int: ...  # number of sequences (a generator: unbounded, 2**62)

    def read(self, indices: np.ndarray, start: int, stop: int) -> np.ndarray: ...  # (b, stop-start) uint8


class SortingGenerator:
    """Sequences generated on demand: window (start, stop) of f for any indices.

    Windows inside x cost O(b·(stop − start)·V). A window that reaches the
    target counts the whole sequence once, chunk by chunk (bounded memory),
    and caches the counts of the last batch of indices.
    """

    def __init__(self, config: SortingConfig) -> None:
        self.config = config
        self._cache: tuple[bytes, np.ndarray] | None = None

    def __len__(self) -> int:
        return 2**62

    def counts(self, indices: np.ndarray) -> np.ndarray:
        """Symbol counts over x for each sequence: (b, V) int64."""
        indices = _as_indices(indices)
        key = indices.tobytes()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        cfg = self.config
        total = np.zeros((indices.size, cfg.num_symbols), dtype=np.int64)
        for lo in range(0, cfg.length, _CHUNK):
            total += symbol_counts(
                sequence_tokens(cfg, indices, lo, min(lo + _CHUNK, cfg.length)), cfg.num_symbols
            )
        self._cache = (key, total)
        return total

    def read(self, indices: np.ndarray, start: int, stop: int) -> np.ndarray:
        cfg = self.config
        indices = _as_indices(indices)
        if not (0 <= start <= stop <= cfg.full_length):
            raise ValueError(f"need 0 <= start <= stop <= {cfg.full_length}, got ({start}, {stop})")
        n = cfg.length
        parts = []
        if start < n:
            parts.append(sequence_tokens(cfg, indices, start, min(stop, n)))
        if start <= n < stop:
            parts.append(np.full((indices.size, 1), cfg.sep_id, dtype=np.uint8))
        if stop > n + 1:
            target = sort_by_count(self.counts(indices))
            parts.append(target[:, max(start, n + 1) - (n + 1) : stop - (n + 1)])
        if not parts:
            return np.zeros((indices.size, 0), dtype=np.uint8)
        return np.concatenate(parts, axis=1)


class ArraySource:
    """Sequences stored as a (num_sequences, n + 1 + V) uint8 array (e.g. a memory-mapped .npy)."""

    def __init__(self, array: np.ndarray, config: SortingConfig) -> None:
        if array.ndim != 2 or array.shape[1] != config.full_length or array.dtype != np.uint8:
            raise ValueError(
                f"array must be uint8 of shape (num_sequences, {config.full_length}), "
                f"got {array.dtype} {array.shape}"
            )
        if array.shape[0] == 0:
            raise ValueError("array holds no sequences")
        self.array = array
        self.config = config

    def __len__(self) -> int:
        return self.array.shape[0]

    def read(self, indices: np.ndarray, start: int, stop: int) -> np.ndarray:
        indices = _as_indices(indices)
        if indices.size and indices.max() >= len(self):
            raise ValueError(f"sequence index {int(indices.max())} out of range for {len(self)} sequences")
        return np.asarray(self.array[indices, start:stop])


def materialize(config: SortingConfig, indices: Any) -> np.ndarray:
    """The full sequences f in one piece: (b, n + 1 + V) uint8."""
    indices = _as_indices(indices)
    x = sequence_tokens(config, indices, 0, config.length)
    sep = np.full((indices.size, 1), config.sep_id, dtype=np.uint8)
    return np.concatenate([x, sep, sort_by_count(symbol_counts(x, config.num_symbols))], axis=1)


def save_sequences(
    path: str | os.PathLike, config: SortingConfig, num_sequences: int, start: int = 0
) -> None:
    """Write sequences start..start+num−1 to a .npy file (uint8), chunk by chunk.

    The config goes into a sidecar ``<path>.json`` so the file can be loaded alone.
    """
    check_int("num_sequences", num_sequences, 1)
    path = os.fspath(path)
    if not path.endswith(".npy"):
        raise ValueError(f"path must end with .npy, got {path!r}")
    gen = SortingGenerator(config)
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(num_sequences, config.full_length)
    )
    rows = max(1, (1 << 22) // config.full_length)  # ~4 MB per chunk
    for lo in range(0, num_sequences, rows):
        idx = np.arange(start + lo, start + min(lo + rows, num_sequences))
        out[lo : lo + idx.size] = gen.read(idx, 0, config.full_length)
    out.flush()
    del out
    write_json(path + ".json", {**config.to_dict(), "start": start, "num_sequences": num_sequences})


def load_sequences(path: str | os.PathLike) -> ArraySource:
    """Memory-map a file written by save_sequences."""
    import json

    path = os.fspath(path)
    for p in (path, path + ".json"):
        if not os.path.exists(p):
            raise FileNotFoundError(f"sorting data file not found: {p}")
    with open(path + ".json") as f:
        meta = json.load(f)
    meta.pop("start", None)
    meta.pop("num_sequences", None)
    return ArraySource(np.load(path, mmap_mode="r"), SortingConfig.from_dict(meta))


# ------------------------------------------------------------------------ LM framing


def num_segments(config: SortingConfig, segment_len: int) -> int:
    """Segments per sequence: inputs f[:-1] (n + V tokens), left-padded to a multiple of S."""
    return math.ceil((config.full_length - 1) / segment_len)


class SortingStream:
    """Segments of batches of sorting sequences, for the trainer (one shard of the batch).

    Batch s holds sequences s·global_batch + rank·local + (0..local−1) (modulo
    the source size for a finite file). With several sources (e.g. lengths),
    batch s comes from source s mod len(sources). Each sequence is left-padded and cut
    into ``num_segments`` segments of S tokens; only the last segment has the
    answer in its loss mask, and only it is ``train``. ``reset`` is all-True on
    the first segment of a batch. ``num_batches`` None: an endless stream.

    state_dict() is the index of the next batch; iteration resumes from it.
    """

    def __init__(
        self,
        source: SequenceSource | list[SequenceSource],
        segment_len: int,
        shard: Shard,
        num_batches: int | None = None,
        start_batch: int = 0,
    ) -> None:
        self.sources = list(source) if isinstance(source, (list, tuple)) else [source]
        if not self.sources:
            raise ValueError("source must be a sequence source or a non-empty list of them")
        for src in self.sources:  # the answer must fit in one segment
            check_int("segment_len", segment_len, src.config.num_symbols)
        if num_batches is not None:
            check_int("num_batches", num_batches, 1)
        self.segment_len = segment_len
        self.shard = shard
        self.num_batches = num_batches
        self.batch_index = start_batch

    def source(self, batch_index: int) -> SequenceSource:
        return self.sources[batch_index % len(self.sources)]

    def state_dict(self) -> dict[str, int]:
        return {"batch_index": self.batch_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_index = int(state["batch_index"])

    def batch_indices(self, batch_index: int) -> np.ndarray:
        sh = self.shard
        first = batch_index * sh.global_batch_size + sh.rank * sh.batch_size
        return (first + np.arange(sh.batch_size, dtype=np.int64)) % len(self.source(batch_index))

    def batch_segments(self, batch_index: int) -> Iterator[Segment]:
        """All segments of one batch, in order."""
        source, seg = self.source(batch_index), self.segment_len
        cfg = source.config
        indices = self.batch_indices(batch_index)
        total = cfg.full_length - 1  # inputs
        k_segments = num_segments(cfg, seg)
        pad = k_segments * seg - total
        answer_lo = cfg.length  # input position of SEP: the first answer position
        b = indices.size
        for k in range(k_segments):
            lo, hi = k * seg - pad, (k + 1) * seg - pad  # input positions of this segment
            a, z = max(lo, 0), hi
            window = source.read(indices, a, z + 1)  # f[a .. z]
            tokens = np.full((b, seg), cfg.pad_id, dtype=np.int64)
            targets = np.full((b, seg), cfg.pad_id, dtype=np.int64)
            tokens[:, a - lo :] = window[:, :-1]
            targets[:, a - lo :] = window[:, 1:]
            positions = np.arange(lo, hi)
            mask = np.broadcast_to((positions >= answer_lo) & (positions < total), (b, seg))
            yield Segment(
                tokens=torch.from_numpy(tokens),
                targets=torch.from_numpy(targets),
                loss_mask=torch.from_numpy(np.ascontiguousarray(mask)),
                reset=torch.full((b,), k == 0, dtype=torch.bool),
                train=k == k_segments - 1,
            )

    def __iter__(self) -> Iterator[Segment]:
        while self.num_batches is None or self.batch_index < self.num_batches:
            batch = self.batch_index
            for segment in self.batch_segments(batch):
                if segment.train:
                    self.batch_index = batch + 1  # position after the step this segment triggers
                yield segment
