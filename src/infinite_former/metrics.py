"""Reply metrics of document-grounded dialogue (PAPER §5, CMU-DoG): F1, ROUGE-1, ROUGE-L, METEOR.

:func:`dialogue_scores` returns each metric in percent, averaged over (prediction, reference)
pairs, as the paper's evaluation does:

- **F1**: unigram F1 after SQuAD normalisation (lower case; punctuation and the articles a/an/the
  removed; whitespace collapsed), as in the official SQuAD v1.1 evaluation script (no overlap:
  0). Neither library below computes it.
- **ROUGE-1, ROUGE-L**: F-measures from Google's ``rouge-score`` package, Porter stemmer on.
- **METEOR**: ``nltk.translate.meteor_score.meteor_score([reference_tokens], prediction_tokens)``,
  tokens from ``nltk.wordpunct_tokenize`` of the lower-cased text. METEOR needs WordNet 3.0: nltk's
  own ``wordnet`` corpus when it is installed (``nltk.download("wordnet")``), else the WordNet
  3.0 database of Debian's ``wordnet-base`` package (``/usr/share/wordnet``, which ``.ci/run``
  installs), or a folder named by ``INFINITE_FORMER_WORDNET``, read with nltk's
  ``WordNetCorpusReader``. Without WordNet, METEOR is reported as ``None`` with a warning,
  never as 0.
"""

from __future__ import annotations

import collections
import io
import os
import re
import string
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

WORDNET_ENV = "INFINITE_FORMER_WORDNET"
DEBIAN_WORDNET = "/usr/share/wordnet"
# The 45 lexicographer files of WordNet 3.0, as listed in lexnames(5WN). Debian's database ships
# without the ``lexnames`` file that nltk's reader opens, so it is served from here (only
# ``Synset.lexname()`` uses it; METEOR does not).
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl"
).split()
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


# -------------------------------------------------------------------------------------------- F1


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def unigram_f1(prediction: str, reference: str) -> float:
    """Unigram F1 (in [0, 1]) between normalised token bags; 0 when nothing is shared."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------- WordNet


def _debian_reader(root: str) -> Any:
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class DictFolderWordNet(WordNetCorpusReader):
        """WordNet 3.0 from a plain ``dict`` folder (data.*, index.*, *.exc)."""

        def open(self, fileid: str) -> Any:
            if fileid == "lexnames" and not (Path(root) / "lexnames").is_file():
                lines = (f"{i:02d}\t{n}\t{_POS_NUMBER[n.split('.')[0]]}\n" for i, n in enumerate(_LEXNAMES))
                return io.StringIO("".join(lines))
            return super().open(fileid)

        def map_wn(self, version: str = "wordnet") -> None:
            return None  # this is WordNet 3.0, the version nltk's "wordnet" maps from: nothing to map

    if root not in nltk.data.path:
        nltk.data.path.append(root)  # nltk only opens files under its data paths
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed
        reader = DictFolderWordNet(root, None)
    version = reader.get_version()
    if version != "3.0":
        raise ValueError(f"{WORDNET_ENV}: {root!r} holds WordNet {version}, expected 3.0")
    return reader


@lru_cache(maxsize=1)
def load_wordnet() -> tuple[Any, str]:
    """(WordNet reader or None, where it came from / why it is missing)."""
    try:
        import nltk  # noqa: F401
    except ImportError:
        return None, "nltk is not installed (pip install 'infinite-former[dialogue]')"
    folder = os.environ.get(WORDNET_ENV)
    if not folder:
        try:
            from nltk.corpus import wordnet

            wordnet.ensure_loaded()
            return wordnet, "nltk_data corpora/wordnet"
        except LookupError:
            folder = DEBIAN_WORDNET
    if not (Path(folder) / "data.noun").is_file():
        return None, (
            f"no WordNet found: nltk's wordnet corpus is not installed and {folder!r} holds no data.noun "
            "(apt-get install wordnet-base, or nltk.download('wordnet'))"
        )
    try:
        return _debian_reader(folder), folder
    except (OSError, ValueError, LookupError) as e:
        return None, f"WordNet in {folder!r} could not be read: {e}"


# ---------------------------------------------------------------------------------------- scores


def _tokens(text: str) -> list[str]:
    from nltk.tokenize import wordpunct_tokenize

    return wordpunct_tokenize(text.lower())


def per_example_scores(
    predictions: Sequence[str], references: Sequence[str]
) -> dict[str, list[float] | None]:
    """Each metric for each (prediction, reference) pair, in percent; "meteor" is None without WordNet."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise ValueError("predictions and references must be sequences of strings, not one string")
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions and references must have the same length, got {len(predictions)} and {len(references)}"
        )
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    out: dict[str, list[float] | None] = {"f1": [], "rouge1": [], "rougeL": []}
    for p, r in zip(predictions, references):
        out["f1"].append(100.0 * unigram_f1(p, r))
        s = scorer.score(r, p)  # score(target, prediction)
        out["rouge1"].append(100.0 * s["rouge1"].fmeasure)
        out["rougeL"].append(100.0 * s["rougeL"].fmeasure)
    wordnet, where = load_wordnet()
    if wordnet is None:
        warnings.warn(f"METEOR is not computed: {where}", RuntimeWarning, stacklevel=2)
        out["meteor"] = None
    else:
        from nltk.translate.meteor_score import meteor_score

        out["meteor"] = [
            100.0 * meteor_score([_tokens(r)], _tokens(p), wordnet=wordnet)
            for p, r in zip(predictions, references)
        ]
    return out


def dialogue_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float | None]:
    """Mean F1, ROUGE-1, ROUGE-L and METEOR in percent over the pairs (METEOR None without WordNet)."""
    if len(predictions) == 0:
        raise ValueError("predictions must hold at least one reply")
    per = per_example_scores(predictions, references)
    return {k: (None if v is None else sum(v) / len(v)) for k, v in per.items()}


__all__ = ["dialogue_scores", "load_wordnet", "normalize_answer", "per_example_scores", "unigram_f1"]
