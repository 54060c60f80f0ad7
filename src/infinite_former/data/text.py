"""Long-document corpora streamed as B parallel lanes of documents.

Sources (:func:`load_documents`, :func:`load_corpus_split`):

- a folder of ``.txt`` files, one document per file, in sorted name order;
- a single text file (one document);
- a Hugging Face ``datasets`` corpus by name (network needed the first time): WikiText-103
  (``Salesforce/wikitext``, config ``wikitext-103-raw-v1``) split into articles on its `` = Title = ``
  headings, and PG-19 (``deepmind/pg19``), one book per row.

Documents are tokenized once (:func:`tokenize_documents`, optionally cached on disk) and streamed by
:class:`DocumentLanes`: each of the B lanes reads one document at a time, in order, and takes the next
unread document when its document ends. Each document is read as ``EOS d_1 … d_n`` -> targets
``d_1 … d_n EOS`` (the EOS between documents is predicted at the end of each one), cut into segments
of T tokens; a document always starts at a segment boundary (its last segment is padded with
``loss_mask = False``), so a lane's ``reset`` flag is set on exactly the segment where a new document
begins and the model can empty that lane's memory (``state.reset(reset)``) before reading it.

Bits per byte: total NLL in nats / (ln 2 · UTF-8 bytes of the evaluated documents' text); the NLL
includes each document's closing EOS prediction (there is no byte for it, so bpb is slightly
conservative).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..utils import check_int
from .segments import Segment
from .tokenizer import TextTokenizer


@dataclass(frozen=True)
class Document:
    """One document: a name (file stem, article title, book title) and its text."""

    name: str
    text: str

    @property
    def num_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


# ----------------------------------------------------------------------------------------------- sources


def read_text_file(path: str | os.PathLike) -> str:
    """Read a UTF-8 text file; a file that is not UTF-8 raises ValueError naming it."""
    p = Path(path)
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"path: {str(p)!r} is not valid UTF-8 text (byte {e.start}: {e.reason}); "
            "convert it to UTF-8 or remove it from the corpus"
        ) from e


def load_documents(path: str | os.PathLike, pattern: str = "*.txt") -> list[Document]:
    """Documents from a folder (one per ``pattern`` file, sorted by name) or a single file."""
    p = Path(path)
    if p.is_file():
        return [Document(p.stem, read_text_file(p))]
    if not p.is_dir():
        raise ValueError(f"path: {str(p)!r} is neither a text file nor a folder of {pattern} files")
    files = sorted(f for f in p.glob(pattern) if f.is_file())
    if not files:
        raise ValueError(f"path: folder {str(p)!r} holds no {pattern} files (expected one document per file)")
    docs = [Document(f.stem, read_text_file(f)) for f in files]
    return docs


_WIKITEXT_TITLE = re.compile(r"^ = ([^=].*?) = $")


def split_wikitext_articles(lines: Iterable[str]) -> list[Document]:
    """Split WikiText raw lines into articles on their `` = Title = `` headings.

    Section headings (`` = = Section = = ``) stay inside their article. Lines before the first title
    are dropped. Each line keeps its own newline (as in the HF dataset rows).
    """
    docs: list[Document] = []
    title: str | None = None
    body: list[str] = []
    for line in lines:
        m = _WIKITEXT_TITLE.match(line.rstrip("\n"))
        if m is not None:
            if title is not None:
                docs.append(Document(title, "".join(body)))
            title, body = m.group(1).strip(), [line]
        elif title is not None:
            body.append(line)
    if title is not None:
        docs.append(Document(title, "".join(body)))
    return docs


HF_CORPORA: dict[str, dict[str, Any]] = {
    "wikitext-103": {"path": "Salesforce/wikitext", "name": "wikitext-103-raw-v1", "layout": "wikitext"},
    "wikitext-2": {"path": "Salesforce/wikitext", "name": "wikitext-2-raw-v1", "layout": "wikitext"},
    "pg19": {"path": "deepmind/pg19", "name": None, "layout": "rows", "title_field": "short_book_title"},
}


def documents_from_dataset(
    dataset: Any, layout: str = "rows", text_field: str = "text", title_field: str | None = None
) -> list[Document]:
    """Documents from a ``datasets.Dataset``: ``rows`` = one document per row, ``wikitext`` = lines
    split into articles on their titles."""
    if layout not in ("rows", "wikitext"):
        raise ValueError(f"layout must be 'rows' or 'wikitext', got {layout!r}")
    if text_field not in dataset.column_names:
        raise ValueError(
            f"text_field: dataset has no column {text_field!r} (columns: {dataset.column_names})"
        )
    if layout == "wikitext":
        docs = split_wikitext_articles(dataset[text_field])
    else:
        titles = dataset[title_field] if title_field and title_field in dataset.column_names else None
        texts = dataset[text_field]
        docs = [Document(str(titles[i]) if titles else f"row{i}", t) for i, t in enumerate(texts)]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ValueError("dataset: no non-empty documents")
    return docs


def load_hf_documents(name: str, split: str, config: str | None = None, **load_kwargs: Any) -> list[Document]:
    """A Hugging Face corpus by name: ``wikitext-103``, ``wikitext-2``, ``pg19`` (aliases in
    :data:`HF_CORPORA`) or any dataset id with a ``text`` column (one document per row).

    Needs the network (or a populated HF cache); extra kwargs go to ``datasets.load_dataset``.
    """
    import datasets

    spec = HF_CORPORA.get(name, {"path": name, "name": config, "layout": "rows"})
    ds = datasets.load_dataset(spec["path"], config or spec["name"], split=split, **load_kwargs)
    return documents_from_dataset(ds, spec["layout"], "text", spec.get("title_field"))


def load_corpus_split(source: str | os.PathLike, split: str) -> list[Document]:
    """The ``split`` documents of a corpus.

    source: ``hf:NAME`` or ``hf:NAME:CONFIG`` (Hugging Face ``datasets``), a folder with one subfolder
    per split (``train/``, ``valid/``, ``test/``), or a folder / file used as is (any split).
    """
    s = str(source)
    if s.startswith("hf:"):
        parts = s[3:].split(":")
        hf_split = {"valid": "validation"}.get(split, split)
        check_hub_reachable(s)
        try:
            return load_hf_documents(parts[0], hf_split, parts[1] if len(parts) > 1 else None)
        except (ImportError, OSError, ConnectionError, FileNotFoundError) as e:
            raise ValueError(
                f"source: cannot load {s!r} split {hf_split!r}: {_one_line(e)}; {HF_HINT}"
            ) from None
    return load_documents(_split_path(s, split))


HF_HINT = "pass a local folder instead (train/ valid/ test/ of .txt files, one document per file)"
SPLIT_FOLDERS = ("train", "valid", "test")


def _split_path(source: str, split: str) -> Path:
    p = Path(source)
    if (p / split).is_dir():
        return p / split
    if p.is_dir() and any((p / name).is_dir() for name in SPLIT_FOLDERS):
        present = [name for name in SPLIT_FOLDERS if (p / name).is_dir()]
        raise ValueError(f"source: folder {source!r} has no {split}/ split (it has {present})")
    if p.exists():
        return p
    raise ValueError(f"source: {source!r} does not exist (expected a folder, a .txt file, or hf:NAME)")


def check_splits(source: str | os.PathLike, splits: Iterable[str]) -> None:
    """Check, before any tokenization or training, that every split (empty names skipped) of
    ``source`` exists: a local folder/file holding documents, or a reachable ``hf:`` corpus."""
    s = str(source)
    if s.startswith("hf:"):
        check_hub_reachable(s)
        return
    for split in dict.fromkeys(x for x in splits if x):
        p = _split_path(s, split)
        if p.is_dir() and not any(f.is_file() for f in p.glob("*.txt")):
            raise ValueError(f"source: folder {str(p)!r} ({split} split) holds no .txt files")


def check_hub_reachable(source: str, timeout: float = 3.0) -> None:
    """Fail fast (one line, with a hint) when an ``hf:`` corpus cannot be downloaded: offline mode
    without a cached copy is left to datasets; no connection to the Hub within ``timeout`` s is an error."""
    import socket

    if any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in _OFFLINE_VARS):
        return  # offline mode: datasets reads its cache (a missing copy fails in load_corpus_split)
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host.split(":")[0], 443), timeout=timeout).close()
    except OSError as e:
        raise ValueError(
            f"source: {source!r} needs the Hugging Face Hub, which is not reachable ({e}); {HF_HINT}"
        ) from None


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


# ----------------------------------------------------------------------------------------- tokenization


@dataclass
class TokenizedCorpus:
    """Token ids of each document (int64 1-D tensors), with names and UTF-8 byte counts."""

    names: list[str]
    tokens: list[Tensor]
    num_bytes: list[int]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def num_tokens(self) -> int:
        return sum(int(t.numel()) for t in self.tokens)


def tokenize_documents(
    docs: Sequence[Document], tokenizer: TextTokenizer, cache_dir: str | os.PathLike | None = None
) -> TokenizedCorpus:
    """Tokenize ``docs``; with ``cache_dir``, reuse a cached result for the same texts and tokenizer."""
    if not docs:
        raise ValueError("docs: no documents to tokenize")
    path = None
    if cache_dir is not None:
        h = hashlib.sha256(tokenizer.fingerprint().encode())
        for d in docs:
            h.update(d.name.encode("utf-8") + b"\0" + hashlib.sha256(d.text.encode("utf-8")).digest())
        path = Path(cache_dir) / f"tokens-{h.hexdigest()[:20]}.pt"
        if path.is_file():
            cached = torch.load(path, weights_only=True)
            return TokenizedCorpus(cached["names"], cached["tokens"], cached["num_bytes"])
    ids = tokenizer.encode_batch([d.text for d in docs])
    corpus = TokenizedCorpus(
        [d.name for d in docs], [torch.tensor(i, dtype=torch.long) for i in ids], [d.num_bytes for d in docs]
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"names": corpus.names, "tokens": corpus.tokens, "num_bytes": corpus.num_bytes}, tmp)
        os.replace(tmp, path)
    return corpus


# ------------------------------------------------------------------------------------------------ lanes


def check_segment_length(seg_len: int, max_positions: int | None, name: str = "seg_len") -> None:
    """ValueError if a segment/block is longer than the model's positions."""
    check_int(name, seg_len, 1)
    if max_positions is not None and seg_len > max_positions:
        raise ValueError(
            f"{name}={seg_len} is longer than the model's positions (max_positions={max_positions}); "
            f"use {name} <= {max_positions}"
        )


@dataclass
class DocumentLanes:
    """B lanes reading documents in order, segment by segment (deterministic, resumable).

    Document i is read from a flat stream ``EOS d0 EOS d1 EOS …``: inputs start at ``offsets[i]`` and
    targets one later, ``len_i = n_i + 1`` positions. With ``loop=True`` (training) the corpus repeats
    forever; with ``loop=False`` (evaluation) lanes go idle when no document is left and iteration stops
    when every lane is idle. All per-lane work is batched tensor indexing (no loop over lanes).
    """

    corpus: TokenizedCorpus
    batch_size: int
    seg_len: int
    eos_id: int
    loop: bool = True
    train: bool = True
    max_positions: int | None = None
    # lane state (see state_dict)
    lane_doc: Tensor = field(init=False)
    lane_pos: Tensor = field(init=False)
    next_doc: int = field(init=False, default=0)
    segments_read: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if len(self.corpus) == 0:
            raise ValueError("corpus: no documents")
        check_int("batch_size", self.batch_size, 1)
        check_segment_length(self.seg_len, self.max_positions)
        lens = torch.tensor([int(t.numel()) for t in self.corpus.tokens], dtype=torch.long)
        if bool((lens == 0).any()):
            empty = [n for n, ln in zip(self.corpus.names, lens.tolist()) if ln == 0]
            raise ValueError(f"corpus: empty documents {empty[:5]} (remove them)")
        eos = torch.tensor([self.eos_id], dtype=torch.long)
        pieces = [eos]
        for t in self.corpus.tokens:
            pieces += [t.long(), eos]
        self._flat = torch.cat(pieces)  # (Σ n_i + D + 1,)
        self._len = lens + 1  # input positions per document (its tokens + the closing EOS target)
        self._offset = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lens + 1, 0)[:-1]])
        self.lane_doc = torch.full((self.batch_size,), -1, dtype=torch.long)
        self.lane_pos = torch.zeros(self.batch_size, dtype=torch.long)
        self.next_doc = 0
        self.segments_read = 0

    @property
    def num_docs(self) -> int:
        return len(self.corpus)

    def __iter__(self) -> Iterator[Segment]:
        while True:
            seg = self.next_segment()
            if seg is None:
                return
            yield seg

    def next_segment(self) -> Segment | None:
        """The next (B, T) segment, or None when ``loop=False`` and every document has been read."""
        B, T, D = self.batch_size, self.seg_len, self.num_docs
        active = self.lane_doc >= 0
        doc_len = torch.where(active, self._len[self.lane_doc.clamp(min=0)], torch.zeros_like(self.lane_pos))
        done = self.lane_pos >= doc_len  # idle lanes count as done: they try to take a document
        k = torch.cumsum(done.long(), 0) - 1  # lanes take the next documents in lane order
        new_doc = self.next_doc + k
        if self.loop:
            new_doc = new_doc % D
        else:
            new_doc = torch.where(new_doc < D, new_doc, torch.full_like(new_doc, -1))
        self.lane_doc = torch.where(done, new_doc, self.lane_doc)
        self.lane_pos = torch.where(done, torch.zeros_like(self.lane_pos), self.lane_pos)
        self.next_doc = self.next_doc + int(done.sum())
        if self.loop:
            self.next_doc %= D
        else:
            self.next_doc = min(self.next_doc, D)
        active = self.lane_doc >= 0
        if not bool(active.any()):
            return None
        doc = self.lane_doc.clamp(min=0)
        pos = self.lane_pos[:, None] + torch.arange(T)  # (B, T)
        valid = active[:, None] & (pos < self._len[doc][:, None])
        idx = (self._offset[doc][:, None] + pos).clamp(max=self._flat.numel() - 2)
        eos = torch.full((B, T), self.eos_id, dtype=torch.long)
        tokens = torch.where(valid, self._flat[idx], eos)
        targets = torch.where(valid, self._flat[idx + 1], eos)
        reset = done | ~active  # a new document starts here (idle lanes: keep memory empty)
        self.lane_pos = self.lane_pos + T
        self.segments_read += 1
        doc_ids = torch.where(active, self.lane_doc, -1)
        return Segment(tokens, targets, valid, reset, self.train, doc_ids)

    def state_dict(self) -> dict[str, Any]:
        return {
            "lane_doc": self.lane_doc.tolist(),
            "lane_pos": self.lane_pos.tolist(),
            "next_doc": self.next_doc,
            "segments_read": self.segments_read,
            "num_docs": self.num_docs,
            "num_tokens": self.corpus.num_tokens,
            "batch_size": self.batch_size,
            "seg_len": self.seg_len,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expect = {
            "num_docs": self.num_docs,
            "num_tokens": self.corpus.num_tokens,
            "batch_size": self.batch_size,
            "seg_len": self.seg_len,
        }
        for k, v in expect.items():
            if state.get(k) != v:
                raise ValueError(f"state: {k}={state.get(k)!r} does not match this stream ({k}={v!r})")
        self.lane_doc = torch.tensor(state["lane_doc"], dtype=torch.long)
        self.lane_pos = torch.tensor(state["lane_pos"], dtype=torch.long)
        self.next_doc = int(state["next_doc"])
        self.segments_read = int(state["segments_read"])


class LaneStream:
    """One process's rows of :class:`DocumentLanes`: a ``SegmentStream`` for the Trainer.

    All processes build the same global lanes (global batch) and each keeps its own rows, so one
    process and N processes see the same data.
    """

    def __init__(self, lanes: DocumentLanes, rank: int = 0, local_batch: int | None = None) -> None:
        self.lanes = lanes
        b = local_batch or lanes.batch_size
        self.rows = slice(rank * b, (rank + 1) * b)

    def __iter__(self) -> Iterator[Segment]:
        for seg in self.lanes:
            yield seg.select(self.rows)

    def state_dict(self) -> dict[str, Any]:
        return self.lanes.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lanes.load_state_dict(state)


# ---------------------------------------------------------------------------------------------- metrics


@dataclass
class DocumentNLL:
    """Accumulates per-token NLL by document: perplexity per document and over the corpus, bits per byte."""

    corpus: TokenizedCorpus
    nll: Tensor = field(init=False)
    count: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.nll = torch.zeros(len(self.corpus), dtype=torch.float64)
        self.count = torch.zeros(len(self.corpus), dtype=torch.long)

    def add(self, token_nll: Tensor, loss_mask: Tensor, doc_ids: Tensor) -> None:
        """token_nll, loss_mask: (B, T); doc_ids: (B,) (-1 = idle)."""
        m = loss_mask & (doc_ids[:, None] >= 0)
        per_lane = (token_nll.detach().double() * m).sum(1).cpu()
        n = m.sum(1).cpu()
        ids = doc_ids.clamp(min=0).cpu()
        self.nll.index_add_(0, ids, per_lane)
        self.count.index_add_(0, ids, n)

    def summary(self) -> dict[str, Any]:
        seen = self.count > 0
        total_nll = float(self.nll[seen].sum())
        total_tokens = int(self.count[seen].sum())
        nbytes = torch.tensor(self.corpus.num_bytes, dtype=torch.float64)
        total_bytes = float(nbytes[seen].sum())
        per_doc = {
            name: {
                "ppl": math.exp(float(self.nll[i] / self.count[i])),
                "bpb": float(self.nll[i]) / (math.log(2) * float(nbytes[i])),
                "tokens": int(self.count[i]),
                "bytes": int(nbytes[i]),
            }
            for i, name in enumerate(self.corpus.names)
            if bool(seen[i])
        }
        return {
            "ppl": math.exp(total_nll / max(total_tokens, 1)),
            "bpb": total_nll / (math.log(2) * max(total_bytes, 1.0)),
            "nll_per_token": total_nll / max(total_tokens, 1),
            "tokens": total_tokens,
            "bytes": int(total_bytes),
            "documents": int(seen.sum()),
            "per_document": per_doc,
        }
