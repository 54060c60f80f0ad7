"""metrics.py: F1 (SQuAD normalisation), ROUGE-1 / ROUGE-L (rouge-score), METEOR (nltk + WordNet),
on cases computed by hand."""

from __future__ import annotations

import pytest

pytest.importorskip("rouge_score")
pytest.importorskip("nltk")

from infinite_former import metrics  # noqa: E402
from infinite_former.metrics import dialogue_scores, normalize_answer, per_example_scores, unigram_f1  # noqa: E402

needs_wordnet = pytest.mark.skipif(
    metrics.load_wordnet()[0] is None, reason=f"METEOR needs WordNet: {metrics.load_wordnet()[1]}"
)


def test_squad_normalisation() -> None:
    assert normalize_answer("The, quick!  An apple -- a PEAR.") == "quick apple pear"
    assert normalize_answer("theatre anatomy") == "theatre anatomy"  # articles only as whole words


def test_unigram_f1_by_hand() -> None:
    # pred -> "cat sat", ref -> "cat sat on mat": 2 shared, P = 1, R = 1/2, F1 = 2/3
    assert unigram_f1("The cat sat.", "a cat sat on the mat") == pytest.approx(2 / 3)
    # bags, not sets: "go go" vs "go": 1 shared, P = 1/2, R = 1, F1 = 2/3
    assert unigram_f1("go go", "go") == pytest.approx(2 / 3)
    assert unigram_f1("nothing shared", "at all") == 0.0
    assert unigram_f1("", "something") == 0.0


def test_rouge_by_hand() -> None:
    s = per_example_scores(["the cats run", "b a"], ["the cat runs fast", "a b"])
    # Porter stems: cats -> cat, runs -> run: 3 of 3 predicted, 3 of 4 reference: F = 6/7
    assert s["rouge1"][0] == pytest.approx(100 * 6 / 7)
    assert s["rougeL"][0] == pytest.approx(100 * 6 / 7)
    # order: unigrams all match (ROUGE-1 = 1), longest common subsequence is 1 of 2 (ROUGE-L = 1/2)
    assert s["rouge1"][1] == pytest.approx(100.0)
    assert s["rougeL"][1] == pytest.approx(50.0)


@needs_wordnet
def test_meteor_by_hand() -> None:
    s = per_example_scores(
        ["the cat sat on the mat", "a dog barked", "zzz"],
        ["the cat sat on the mat", "a hound barked", "the dog"],
    )
    # identical 6 tokens: P = R = 1, one chunk: penalty 0.5 (1/6)^3
    assert s["meteor"][0] == pytest.approx(100 * (1 - 0.5 * (1 / 6) ** 3))
    # dog ~ hound only through WordNet synonyms (barked ~ barked exactly): 3 matches, one chunk
    assert s["meteor"][1] == pytest.approx(100 * (1 - 0.5 * (1 / 3) ** 3))
    assert s["meteor"][2] == 0.0


@needs_wordnet
def test_dialogue_scores_are_means_in_percent() -> None:
    preds, refs = ["The cat sat.", "go go", "b a"], ["a cat sat on the mat", "go", "a b"]
    per = per_example_scores(preds, refs)
    out = dialogue_scores(preds, refs)
    assert set(out) == {"f1", "rouge1", "rougeL", "meteor"}
    for k, v in out.items():
        assert v == pytest.approx(sum(per[k]) / 3)
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 2 / 3 + 1) / 3)


def test_missing_wordnet_is_reported_missing_not_zero(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(metrics.WORDNET_ENV, str(tmp_path))  # a folder without WordNet
    metrics.load_wordnet.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="METEOR is not computed"):
            out = dialogue_scores(["a b c"], ["a b c"])
        assert out["meteor"] is None
        assert out["f1"] == pytest.approx(100.0)
    finally:
        metrics.load_wordnet.cache_clear()


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        dialogue_scores(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="not one string"):
        dialogue_scores("abc", "abc")
    with pytest.raises(ValueError, match="at least one"):
        dialogue_scores([], [])
