"""Recall-at-distance data (data/recall.py): answers depend only on the content D tokens back, the
splits share no item, chance levels hold, and the sequences stream through SortingStream."""

from __future__ import annotations

import numpy as np
import pytest

from infinite_former.data.recall import (
    FILLER,
    MARK,
    SEP,
    RecallConfig,
    RecallGenerator,
    gist_answer,
    item_bucket,
    make_sequence,
)
from infinite_former.data.segments import Shard
from infinite_former.data.sorting import SortingStream


def test_gist_answer_is_the_signal_segment_sorted_by_count_then_first_occurrence():
    seg = np.array([2, 1, 1, 3, 0, 2, 1, 0])  # counts 0:2 1:3 2:2 3:1; 2 occurs before 0
    np.testing.assert_array_equal(gist_answer(seg), [1, 2, 0, 3])


@pytest.mark.parametrize("distance", [0, 100, 700])
def test_gist_answer_depends_only_on_the_segment_D_tokens_back(distance):
    cfg = RecallConfig("gist", distance, seed=3, signal_len=24)
    for i in range(20):
        f = make_sequence(cfg, i)
        g = cfg.signal_len
        assert f.shape == (cfg.full_length,) and f[cfg.length] == SEP
        np.testing.assert_array_equal(f[-4:], gist_answer(f[:g]))
        assert set(f[g : g + distance]) <= set(FILLER.tolist())  # the filler holds no content symbol
        assert cfg.length - (g - 1) - 1 == distance  # D tokens between the segment and the query


@pytest.mark.parametrize("distance", [0, 63, 300])
def test_verbatim_answer_is_the_value_of_the_queried_key_D_tokens_back(distance):
    cfg = RecallConfig("verbatim", distance, seed=1)
    for i in range(20):
        f = make_sequence(cfg, i)
        key, value = f[1:3], f[3:5]
        assert f[0] == MARK and f[cfg.length - 2] == SEP
        np.testing.assert_array_equal(f[-4:-2], key)
        np.testing.assert_array_equal(f[-2:], value)
        marks = np.flatnonzero(f[: cfg.length] == MARK)
        assert len(marks) == 1 + distance // cfg.distractor_every
        keys = [tuple(f[m + 1 : m + 3]) for m in marks[1:]]
        assert tuple(key) not in keys  # every distractor has another key: only the pair D back answers


@pytest.mark.parametrize("task", ["gist", "verbatim"])
def test_train_and_test_items_are_disjoint(task):
    def items(split):
        cfg = RecallConfig(task, 130, seed=0, split=split, signal_len=8)
        out = set()
        for i in range(150):
            f = make_sequence(cfg, i)
            if task == "gist":
                out.add(tuple(f[:8]))
            else:  # the target pair and every distractor pair
                out.update(tuple(f[m + 1 : m + 5]) for m in np.flatnonzero(f[: cfg.length - 2] == MARK))
        return out

    train, test = items("train"), items("test")
    assert all(item_bucket(np.array(t)) != 0 for t in train)
    assert all(item_bucket(np.array(t)) == 0 for t in test)
    assert not train & test
    # the same index in another split or seed is another sequence
    a, b = make_sequence(RecallConfig(task, 50), 0), make_sequence(RecallConfig(task, 50, seed=1), 0)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, make_sequence(RecallConfig(task, 50), 0))


def test_chance_levels_hold_by_symmetry():
    """Gist: the most frequent symbol is uniform over the 4; verbatim: values uniform over 8 symbols."""
    assert RecallConfig("gist", 5).chance_accuracy == pytest.approx((1 / 4 + 1 / 3 + 1 / 2 + 1) / 4)
    assert RecallConfig("verbatim", 5).chance_accuracy == 1 / 8
    gen = RecallGenerator(RecallConfig("gist", 4, split="test"))
    first = gen.sequences(np.arange(2000))[:, -4]
    np.testing.assert_allclose(np.bincount(first, minlength=4) / 2000, 0.25, atol=0.035)
    gen = RecallGenerator(RecallConfig("verbatim", 4, split="train"))
    values = gen.sequences(np.arange(2000))[:, -2:].ravel()
    np.testing.assert_allclose(np.bincount(values, minlength=8) / 4000, 1 / 8, atol=0.02)


def test_sequences_stream_through_sorting_stream_with_the_answer_in_the_last_segment():
    cfg = RecallConfig("verbatim", 100)
    gen = RecallGenerator(cfg)
    segments = list(SortingStream(gen, 32, Shard(0, 1, 3)).batch_segments(0))
    f = gen.sequences(np.arange(3))
    assert len(segments) == -(-(cfg.full_length - 1) // 32)
    assert [s.train for s in segments] == [False] * (len(segments) - 1) + [True]
    last = segments[-1]
    assert int(last.loss_mask.sum()) == 3 * cfg.answer_len
    np.testing.assert_array_equal(last.targets[last.loss_mask].view(3, -1).numpy(), f[:, -2:])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="task must be one of"):
        RecallConfig("copy", 10)
    with pytest.raises(ValueError, match="distance"):
        RecallConfig("gist", -1)
    with pytest.raises(ValueError, match="split"):
        RecallConfig("gist", 1, split="dev")
