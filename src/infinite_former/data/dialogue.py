"""Document-grounded dialogue (PAPER §5, CMU-DoG): readers, and training examples cut into blocks.

Readers, all returning ``list[Dialogue]``:

- :func:`read_cmu_dog` for the CMU-DoG release layout: ``WikiData/<i>.json`` (sections "0".."3"
  and ``wikiDocumentIdx``; section "0" is a dict of movie fields, "1".."3" are text) and
  ``Conversations/{train,valid,test}/*.json`` (``history``: a list of ``{docIdx, text, uid,
  utcTimestamp}`` plus ``wikiDocumentIdx``). Consecutive messages of one speaker are joined
  into one turn, as the CMU-DoG README says.
- :func:`read_jsonl` for users' own data, one dialogue per line:
  ``{"document": ..., "turns": [{"speaker": ..., "text": ...}, ...]}`` (optional ``"doc_id"``).
- :func:`read_shakespeare_dialogues`: an offline document-grounded set built from plays (a
  folder with train/ valid/ test/ of ``.txt`` plays): one dialogue per scene, its turns the
  scene's speeches, its document the play's text before the scene.

Examples (:func:`build_example`), as in the paper and its released GPT-2 code: special tokens
``<bos> <eos> <doc> <speaker1> <speaker2> <pad>`` are added to the tokenizer; the sequence is
``<bos> <doc> document <speaker·> turn … <speaker2> reply <eos>``; the reply's speaker is always
``<speaker2>`` and every other speaker ``<speaker1>``. The sequence is cut into blocks of L tokens
from the end; when it does not fit in one block, the document and the dialogue (history + reply)
are cut separately, so the reply's block holds only dialogue and the document reaches the reply
only through the long-term memory. The loss is on the reply's tokens and its ``<eos>`` only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .text import read_text_file
from .tokenizer import TextTokenizer

SPECIAL_TOKENS = ("<bos>", "<eos>", "<doc>", "<speaker1>", "<speaker2>", "<pad>")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Turn:
    """One turn: who speaks and what (consecutive messages of one speaker already joined)."""

    speaker: str
    text: str


@dataclass(frozen=True)
class Dialogue:
    """A dialogue grounded in a document. doc_id names the document (CMU-DoG: wikiDocumentIdx)."""

    document: str
    turns: tuple[Turn, ...]
    doc_id: str = ""
    name: str = ""  # the file / line / scene it came from

    def __post_init__(self) -> None:
        object.__setattr__(self, "turns", tuple(self.turns))


def join_turns(messages: Iterable[tuple[str, str]]) -> tuple[Turn, ...]:
    """(speaker, text) messages -> turns, joining consecutive messages of the same speaker with a space.
    Empty messages are dropped."""
    turns: list[Turn] = []
    for speaker, text in messages:
        text = " ".join(str(text).split())
        if not text:
            continue
        if turns and turns[-1].speaker == speaker:
            turns[-1] = Turn(speaker, f"{turns[-1].text} {text}")
        else:
            turns.append(Turn(speaker, text))
    return tuple(turns)


# --------------------------------------------------------------------------------------- CMU-DoG


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(read_text_file(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def cmu_dog_document(data: dict[str, Any], where: str) -> str:
    """A WikiData file as plain text: section "0" as "field: value" lines, then sections "1".."3"."""
    parts = []
    intro = _field(data, "0", dict, where)
    for key, value in intro.items():
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        parts.append(f"{key}: {' '.join(text.split())}")
    for section in ("1", "2", "3"):
        text = _field(data, section, str, where)
        parts.append(" ".join(text.split()))
    return "\n".join(p for p in parts if p)


def read_cmu_dog(root: str | os.PathLike, split: str) -> list[Dialogue]:
    """Dialogues of one split of the CMU-DoG release (``root`` holds WikiData/ and Conversations/)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    wiki, conv = root / "WikiData", root / "Conversations" / split
    for folder in (wiki, conv):
        if not folder.is_dir():
            raise ValueError(
                f"root: {str(root)!r} has no {folder.relative_to(root)}/ (expected the CMU-DoG layout)"
            )
    documents: dict[int, str] = {}
    sources: dict[int, Path] = {}
    for path in sorted(wiki.glob("*.json")):
        data = _read_json(path)
        idx = _field(data, "wikiDocumentIdx", int, str(path))
        if idx in sources:  # which one a conversation means is ambiguous
            raise ValueError(f"{path}: field 'wikiDocumentIdx' = {idx} is also the id of {sources[idx]}")
        documents[idx], sources[idx] = cmu_dog_document(data, str(path)), path
    files = sorted(conv.glob("*.json"))
    if not files:
        raise ValueError(f"root: {str(conv)!r} holds no .json conversations")
    out = []
    for path in files:
        data = _read_json(path)
        where = str(path)
        idx = _field(data, "wikiDocumentIdx", int, where)
        if idx not in documents:
            raise ValueError(f"{where}: field 'wikiDocumentIdx' = {idx} names no file in {wiki}")
        history = _field(data, "history", list, where)
        messages = []
        for i, msg in enumerate(history):
            w = f"{where}: history[{i}]"
            messages.append((str(_field(msg, "uid", (str, int), w)), _field(msg, "text", str, w)))
        out.append(Dialogue(documents[idx], join_turns(messages), doc_id=str(idx), name=path.stem))
    return out


# ------------------------------------------------------------------------------------------- JSONL


def read_jsonl(path: str | os.PathLike) -> list[Dialogue]:
    """One dialogue per line: ``{"document": str, "turns": [{"speaker": str, "text": str}, ...]}``."""
    path = Path(path)
    out = []
    for n, line in enumerate(read_text_file(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {n}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from e
        document = _field(data, "document", str, where)
        turns = _field(data, "turns", list, where)
        messages = []
        for i, t in enumerate(turns):
            w = f"{where}: turns[{i}]"
            messages.append((str(_field(t, "speaker", (str, int), w)), _field(t, "text", str, w)))
        doc_id, name = str(data.get("doc_id", "")), str(data.get("name") or f"{path.stem}:{n}")
        out.append(Dialogue(document, join_turns(messages), doc_id=doc_id, name=name))
    if not out:
        raise ValueError(f"path: {str(path)!r} holds no dialogues")
    return out


def write_jsonl(dialogues: Iterable[Dialogue], path: str | os.PathLike) -> Path:
    """Write dialogues in the format :func:`read_jsonl` reads."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as f:
        for d in dialogues:
            turns = [{"speaker": t.speaker, "text": t.text} for t in d.turns]
            row = {"document": d.document, "turns": turns, "doc_id": d.doc_id, "name": d.name}
            f.write(json.dumps(row) + "\n")
    return p


# ------------------------------------------------------------------------------ Shakespeare scenes

_SCENE = re.compile(r"^\s*scene\s+([ivxlc]+|\d+)\b", re.IGNORECASE)
_SPEAKER = re.compile(r"^[A-Z][A-Za-z' \-]{0,40}\.$")
_STAGE = re.compile(r"\[[^\]]*\]?")


def play_scenes(text: str) -> list[tuple[int, list[tuple[str, str]]]]:
    """A play's scenes: (character offset where the scene starts, its (speaker, speech) messages).

    Scenes start at a ``SCENE I.`` / ``Scene 2.`` line; a speech is a paragraph whose first line
    is a speaker tag (``Kent.``, ``KING LEAR.``); stage directions in brackets are removed.
    """
    lines = text.splitlines(keepends=True)
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line)
    scenes: list[tuple[int, list[tuple[str, str]]]] = []
    para: list[str] = []

    def flush() -> None:
        if scenes and len(para) >= 2 and _SPEAKER.match(para[0].strip()):
            speech = _STAGE.sub(" ", " ".join(p.strip() for p in para[1:]))
            scenes[-1][1].append((para[0].strip().rstrip(".").upper(), speech))
        para.clear()

    for line, off in zip(lines, offsets):
        if _SCENE.match(line):
            flush()
            scenes.append((off, []))
        elif line.strip():
            para.append(line)
        else:
            flush()
    flush()
    return scenes


def read_shakespeare_dialogues(
    root: str | os.PathLike, split: str, max_document_chars: int = 0, min_turns: int = 2, max_turns: int = 0
) -> list[Dialogue]:
    """One dialogue per scene of every play in ``root/split/*.txt``.

    document: the play's text before the scene (its last ``max_document_chars`` characters when
    > 0); turns: the scene's speeches (same-speaker runs joined; its first ``max_turns`` when
    > 0). Scenes with fewer than
    ``min_turns`` turns and texts without scene headings (poems) are skipped.
    """
    folder = Path(root) / split
    if not folder.is_dir():
        raise ValueError(
            f"root: {str(root)!r} has no {split}/ folder (expected train/ valid/ test/ of plays)"
        )
    out = []
    for path in sorted(folder.glob("*.txt")):
        text = read_text_file(path)
        for k, (start, messages) in enumerate(play_scenes(text)):
            turns = join_turns(messages)
            turns = turns[:max_turns] if max_turns > 0 else turns
            if len(turns) < min_turns:
                continue
            doc = text[:start]
            if max_document_chars > 0:
                doc = doc[-max_document_chars:]
            out.append(Dialogue(doc, turns, doc_id=path.stem, name=f"{path.stem}/scene{k + 1:02d}"))
    if not out:
        raise ValueError(f"root: no scenes found in {str(folder)!r}")
    return out


def write_shakespeare_jsonl(
    root: str | os.PathLike, out_dir: str | os.PathLike, max_document_chars: int = 0, max_turns: int = 0
) -> dict[str, dict[str, int]]:
    """The plays' scene dialogues (:func:`read_shakespeare_dialogues`) of train/ valid/ test/ as
    ``out_dir/<split>.jsonl`` (what ``dialogue train --data out_dir`` reads); returns
    {split: {"dialogues", "replies"}}."""
    counts = {}
    for split in SPLITS:
        dialogues = read_shakespeare_dialogues(root, split, max_document_chars, max_turns=max_turns)
        write_jsonl(dialogues, Path(out_dir) / f"{split}.jsonl")
        counts[split] = {"dialogues": len(dialogues), "replies": sum(len(d.turns) - 1 for d in dialogues)}
    return counts


def load_dialogues(source: str | os.PathLike, split: str, max_document_chars: int = 0) -> list[Dialogue]:
    """Dispatch on the source: a CMU-DoG folder (WikiData/ + Conversations/), a folder holding
    ``<split>.jsonl``, a ``.jsonl`` file (any split), or ``shakespeare:FOLDER``.
    ``max_document_chars`` > 0 keeps the last that many characters of each document."""
    text = str(source)
    if text.startswith("shakespeare:"):
        return read_shakespeare_dialogues(text.split(":", 1)[1], split, max_document_chars)
    p = Path(source)
    if p.is_file():
        out = read_jsonl(p)
    elif (p / "Conversations").is_dir():
        out = read_cmu_dog(p, split)
    elif (p / f"{split}.jsonl").is_file():
        out = read_jsonl(p / f"{split}.jsonl")
    else:
        out = None
    if out is not None:
        if max_document_chars > 0:
            out = [replace(d, document=d.document[-max_document_chars:]) for d in out]
        return out
    raise ValueError(
        f"data: {text!r} is neither a CMU-DoG folder (WikiData/, Conversations/), a folder with "
        f"{split}.jsonl, a .jsonl file, nor shakespeare:FOLDER"
    )


# ------------------------------------------------------------------------------------------ tokens


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the dialogue special tokens in a tokenizer."""

    bos: int
    eos: int
    doc: int
    speaker1: int
    speaker2: int
    pad: int

    @classmethod
    def of(cls, tokenizer: TextTokenizer) -> SpecialIds:
        if tokenizer.backend is None:
            raise ValueError(
                "tokenizer: the dialogue tokens need a tokenizers backend (gpt2 or bpe, not bytes)"
            )
        ids = [tokenizer.backend.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            raise ValueError(
                f"tokenizer: lacks the dialogue tokens {SPECIAL_TOKENS}; call add_dialogue_tokens"
            )
        return cls(*ids)


def add_dialogue_tokens(tokenizer: TextTokenizer) -> TextTokenizer:
    """Add ``<bos> <eos> <doc> <speaker1> <speaker2> <pad>`` as special tokens (in place; no-op if
    present). The model's embeddings must then be resized to ``tokenizer.vocab_size``."""
    if tokenizer.backend is None:
        raise ValueError("tokenizer: the dialogue tokens need a tokenizers backend (gpt2 or bpe, not bytes)")
    tokenizer.backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer.vocab_size = int(tokenizer.backend.get_vocab_size(with_added_tokens=True))
    return tokenizer


# ----------------------------------------------------------------------------------------- examples


@dataclass
class DialogueExample:
    """One reply in context, as blocks of at most L tokens (the oldest first).

    blocks[i]: (tokens, targets, loss_mask) lists of equal length; targets are the next tokens;
    loss_mask is True where the target is a reply token or the closing <eos>. Only the last
    block has loss positions. doc_blocks: how many leading blocks hold only the document.
    """

    blocks: list[tuple[list[int], list[int], list[bool]]]
    doc_blocks: int
    dialogue: int  # index of the dialogue in its split
    turn: int  # index of the reply in the dialogue's turns
    reply: str = ""


def _cut_from_end(n: int, block: int) -> list[tuple[int, int]]:
    """[start, end) spans of [0, n) in blocks of ``block`` from the end (the first may be shorter)."""
    spans, end = [], n
    while end > 0:
        spans.append((max(end - block, 0), end))
        end -= block
    return spans[::-1]


def block_spans(n_doc: int, n_total: int, block: int) -> tuple[list[tuple[int, int]], int]:
    """Spans of a sequence whose first ``n_doc`` positions are the document: one block when it
    fits, else the document [0, n_doc) and the dialogue [n_doc, n_total) each cut from its end.
    Returns (spans, number of document blocks)."""
    if n_total <= block:
        return [(0, n_total)], 0
    doc = _cut_from_end(n_doc, block)
    dia = [(s + n_doc, e + n_doc) for s, e in _cut_from_end(n_total - n_doc, block)]
    return doc + dia, len(doc)


def context_ids(
    dialogue: Dialogue, turn: int, tokenizer: TextTokenizer, ids: SpecialIds, cache: dict | None = None
) -> tuple[list[int], list[int]]:
    """(document part ``<bos> <doc> document``, history part ``<speaker·> turn …`` + ``<speaker2>``).

    ``cache``: a dict kept while building the examples of one dialogue (its encodings are reused)."""
    cache = {} if cache is None else cache
    if cache.get("dialogue") is not dialogue:
        cache.clear()
        cache["dialogue"] = dialogue
        cache["doc"] = [ids.bos, ids.doc, *tokenizer.encode(dialogue.document)]
        cache["turns"] = tokenizer.encode_batch([t.text for t in dialogue.turns])
    reply_speaker = dialogue.turns[turn].speaker
    history: list[int] = []
    for t, enc in zip(dialogue.turns[:turn], cache["turns"]):
        history += [ids.speaker2 if t.speaker == reply_speaker else ids.speaker1, *enc]
    return cache["doc"], history + [ids.speaker2]


def build_example(
    dialogue: Dialogue,
    turn: int,
    tokenizer: TextTokenizer,
    block_size: int,
    dialogue_index: int = 0,
    cache: dict | None = None,
) -> DialogueExample:
    """The example for reply ``dialogue.turns[turn]`` (turn >= 1): blocks from the end, loss on the reply.

    The reply (with its speaker token and <eos>) is truncated to fit in one block.
    """
    if not 1 <= turn < len(dialogue.turns):
        raise ValueError(f"turn must be in [1, {len(dialogue.turns)}), got {turn}")
    if block_size < 4:
        raise ValueError(f"block_size must be >= 4, got {block_size}")
    ids = SpecialIds.of(tokenizer)
    cache = {} if cache is None else cache
    doc, history = context_ids(dialogue, turn, tokenizer, ids, cache)
    reply = cache["turns"][turn][: block_size - 2] + [ids.eos]
    seq = doc + history + reply
    inputs, targets = seq[:-1], seq[1:]
    first_reply_target = len(doc) + len(history) - 1  # target index of the reply's first token
    mask = [i >= first_reply_target for i in range(len(targets))]
    spans, n_doc_blocks = block_spans(len(doc), len(inputs), block_size)
    blocks = [(inputs[s:e], targets[s:e], mask[s:e]) for s, e in spans]
    return DialogueExample(blocks, n_doc_blocks, dialogue_index, turn, reply=dialogue.turns[turn].text)


def prompt_blocks(
    dialogue: Dialogue,
    turn: int,
    tokenizer: TextTokenizer,
    block_size: int,
    reserve: int,
    cache: dict | None = None,
) -> list[list[int]]:
    """Context blocks to generate reply ``turn`` from, laid out as in training: the dialogue part is
    cut from the end as if ``reserve`` reply tokens followed, so the last block leaves room for them."""
    if not 0 <= reserve < block_size:
        raise ValueError(f"reserve must be in [0, block_size={block_size}), got {reserve}")
    ids = SpecialIds.of(tokenizer)
    doc, history = context_ids(dialogue, turn, tokenizer, ids, cache)
    seq = doc + history
    spans, _ = block_spans(len(doc), len(seq) + reserve, block_size)
    spans[-1] = (spans[-1][0], len(seq))
    return [seq[s:e] for s, e in spans if e > s]


class DialogueExamples(Sequence[DialogueExample]):
    """Every reply (turn >= 1) of every dialogue, in order, built when indexed (so a large split
    does not hold every example's blocks at once); ``max_replies`` > 0 keeps that many replies per
    dialogue, evenly spaced over its turns."""

    def __init__(
        self, dialogues: Sequence[Dialogue], tokenizer: TextTokenizer, block_size: int, max_replies: int = 0
    ) -> None:
        self.dialogues, self.tokenizer, self.block_size = dialogues, tokenizer, block_size
        self.refs = [
            (d, t) for d, dia in enumerate(dialogues) for t in select_turns(len(dia.turns), max_replies)
        ]
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int) -> DialogueExample:  # type: ignore[override]
        d, turn = self.refs[i]
        return build_example(self.dialogues[d], turn, self.tokenizer, self.block_size, d, self._cache)


def build_examples(
    dialogues: Sequence[Dialogue], tokenizer: TextTokenizer, block_size: int, max_replies: int = 0
) -> list[DialogueExample]:
    """:class:`DialogueExamples` as a list (built at once)."""
    return list(DialogueExamples(dialogues, tokenizer, block_size, max_replies))


def select_turns(num_turns: int, max_replies: int = 0) -> list[int]:
    """Reply indices 1 .. num_turns - 1, or ``max_replies`` of them evenly spaced (when > 0)."""
    turns = list(range(1, num_turns))
    if max_replies <= 0 or len(turns) <= max_replies:
        return turns
    step = len(turns) / max_replies
    return [turns[int(i * step)] for i in range(max_replies)]


__all__ = [
    "SPECIAL_TOKENS",
    "Dialogue",
    "DialogueExample",
    "DialogueExamples",
    "SpecialIds",
    "Turn",
    "add_dialogue_tokens",
    "block_spans",
    "build_example",
    "build_examples",
    "join_turns",
    "load_dialogues",
    "play_scenes",
    "prompt_blocks",
    "read_cmu_dog",
    "read_jsonl",
    "read_shakespeare_dialogues",
    "select_turns",
    "write_jsonl",
    "write_shakespeare_jsonl",
]
