"""The sorting-task generator (paper §5): targets, determinism, streaming, files, LM framing."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from infinite_former.data.segments import Shard
from infinite_former.data.sorting import (
    SortingConfig,
    SortingGenerator,
    SortingStream,
    load_sequences,
    materialize,
    num_segments,
    save_sequences,
    sequence_tokens,
    symbol_distributions,
    symbol_weights,
)


def _expected_target(x: np.ndarray, num_symbols: int) -> list[int]:
    counts = collections.Counter(x.tolist())
    return sorted(range(num_symbols), key=lambda s: (-counts.get(s, 0), s))


@pytest.mark.parametrize("length,num_symbols,seed", [(1000, 20, 0), (37, 20, 5), (300, 5, 2)])
def test_targets_match_counter(length, num_symbols, seed):
    cfg = SortingConfig(length=length, num_symbols=num_symbols, seed=seed)
    f = materialize(cfg, np.arange(16))
    assert f.shape == (16, length + 1 + num_symbols) and f.dtype == np.uint8
    assert (f[:, :length] < num_symbols).all()
    assert (f[:, length] == cfg.sep_id).all()
    for row in f:
        assert row[length + 1 :].tolist() == _expected_target(row[:length], num_symbols)
    if length == 37:  # short: some symbols unseen, so the tie rule is exercised
        assert any(len(set(row[:length].tolist())) < num_symbols for row in f)


def test_distribution_moves_from_start_to_end():
    cfg = SortingConfig(length=400_000, num_symbols=20, seed=1)
    weights = symbol_weights(cfg, np.arange(64))
    assert weights.min() == 1 and weights.max() == 9 and len(np.unique(weights)) == 9
    p_start, p_end = symbol_distributions(cfg, np.arange(1))
    assert np.allclose(p_start[0], weights[0, 0] / weights[0, 0].sum())
    assert np.allclose(p_end[0], weights[0, 1] / weights[0, 1].sum())
    head = sequence_tokens(cfg, np.arange(1), 0, 20_000)[0]
    tail = sequence_tokens(cfg, np.arange(1), cfg.length - 20_000, cfg.length)[0]
    emp_head = np.bincount(head, minlength=20) / head.size
    emp_tail = np.bincount(tail, minlength=20) / tail.size
    expect_head = 0.975 * p_start[0] + 0.025 * p_end[0]  # mean r over the first 5%
    expect_tail = 0.025 * p_start[0] + 0.975 * p_end[0]
    assert np.abs(emp_head - expect_head).max() < 0.012
    assert np.abs(emp_tail - expect_tail).max() < 0.012


def test_sequences_are_pure_functions_of_seed_split_index():
    cfg = SortingConfig(length=200, seed=3)
    batch = materialize(cfg, np.array([4, 9, 2]))
    assert np.array_equal(materialize(cfg, np.array([9]))[0], batch[1])
    assert not np.array_equal(materialize(SortingConfig(length=200, seed=4), np.array([9]))[0], batch[1])
    valid = SortingConfig(length=200, seed=3, split="valid")
    assert not np.array_equal(materialize(valid, np.array([9]))[0], batch[1])


def test_streamed_windows_equal_materialized():
    cfg = SortingConfig(length=9000, seed=7)  # > one 4096-token counting chunk
    idx = np.array([0, 5, 11])
    full = materialize(cfg, idx)
    gen = SortingGenerator(cfg)
    pieces = [gen.read(idx, lo, min(lo + 777, cfg.full_length)) for lo in range(0, cfg.full_length, 777)]
    assert np.array_equal(np.concatenate(pieces, axis=1), full)
    assert np.array_equal(
        gen.read(idx, cfg.length - 3, cfg.length + 5), full[:, cfg.length - 3 : cfg.length + 5]
    )


def _stream_segments(stream: SortingStream, batch: int):
    return list(stream.batch_segments(batch))


def test_lm_framing_segments():
    cfg = SortingConfig(length=150, seed=1)
    seg_len = 32
    stream = SortingStream(SortingGenerator(cfg), seg_len, Shard(0, 1, 4))
    segs = _stream_segments(stream, 0)
    assert len(segs) == num_segments(cfg, seg_len) == 6  # 170 inputs -> 6 x 32 = 192, 22 pads
    assert [s.train for s in segs] == [False] * 5 + [True]
    assert segs[0].reset.all() and not any(s.reset.any() for s in segs[1:])
    assert all(not s.loss_mask.any() for s in segs[:-1])
    tokens = torch.cat([s.tokens for s in segs], 1).numpy()
    targets = torch.cat([s.targets for s in segs], 1).numpy()
    mask = torch.cat([s.loss_mask for s in segs], 1).numpy()
    full = materialize(cfg, stream.batch_indices(0))
    pad = tokens.shape[1] - (cfg.full_length - 1)
    assert (tokens[:, :pad] == cfg.pad_id).all() and not mask[:, :pad].any()
    assert np.array_equal(tokens[:, pad:], full[:, :-1]) and np.array_equal(targets[:, pad:], full[:, 1:])
    # loss only on the 20 answer positions, all at the end of the last segment
    assert mask.sum(1).tolist() == [20] * 4 and mask[:, -20:].all()
    assert np.array_equal(targets[mask].reshape(4, 20), full[:, -20:])


def test_stream_position_is_resumable_and_sharded():
    cfg = SortingConfig(length=60, seed=2)
    gen = SortingGenerator(cfg)
    a = SortingStream(gen, 32, Shard(0, 1, 4))
    it = iter(a)
    seen = [next(it) for _ in range(3 * num_segments(cfg, 32))]  # three whole batches
    b = SortingStream(gen, 32, Shard(0, 1, 4))
    b.load_state_dict(a.state_dict())
    assert a.state_dict() == {"batch_index": 3}
    nxt_a, nxt_b = next(it), next(iter(b))
    assert torch.equal(nxt_a.tokens, nxt_b.tokens) and torch.equal(nxt_a.targets, nxt_b.targets)
    assert not torch.equal(seen[0].tokens, nxt_a.tokens)
    # two ranks with half the rows each see exactly the rows of the single-process batch
    r0 = SortingStream(gen, 32, Shard(0, 2, 2)).batch_indices(5)
    r1 = SortingStream(gen, 32, Shard(1, 2, 2)).batch_indices(5)
    assert np.concatenate([r0, r1]).tolist() == a.batch_indices(5).tolist()


def test_several_lengths_cycle_per_batch():
    gens = [SortingGenerator(SortingConfig(length=n)) for n in (40, 100)]
    stream = SortingStream(gens, 32, Shard(0, 1, 2))
    assert len(_stream_segments(stream, 0)) == 2 and len(_stream_segments(stream, 1)) == 4


def test_save_load_round_trip(tmp_path):
    cfg = SortingConfig(length=300, seed=9, split="test")
    path = tmp_path / "sort.npy"
    save_sequences(path, cfg, num_sequences=10)
    src = load_sequences(path)
    assert src.config == cfg and len(src) == 10
    assert np.array_equal(np.asarray(src.array), materialize(cfg, np.arange(10)))
    from_file = _stream_segments(SortingStream(src, 64, Shard(0, 1, 5)), 1)
    from_gen = _stream_segments(SortingStream(SortingGenerator(cfg), 64, Shard(0, 1, 5)), 1)
    for a, b in zip(from_file, from_gen, strict=True):
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.targets, b.targets)
        assert torch.equal(a.loss_mask, b.loss_mask)


def test_bad_inputs():
    with pytest.raises(ValueError, match="length"):
        SortingConfig(length=0)
    with pytest.raises(ValueError, match="split"):
        SortingConfig(length=10, split="dev")
    with pytest.raises(ValueError, match="num_symbols"):
        SortingConfig(length=10, num_symbols=1)
    with pytest.raises(ValueError, match="segment_len"):
        SortingStream(SortingGenerator(SortingConfig(length=10)), 16, Shard(0, 1, 1))  # < 20 symbols
    with pytest.raises(ValueError, match="indices"):
        materialize(SortingConfig(length=10), np.array([-1]))
    with pytest.raises(FileNotFoundError, match="nothere.npy"):
        load_sequences("/nonexistent/nothere.npy")
