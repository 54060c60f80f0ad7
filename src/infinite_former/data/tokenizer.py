"""Tokenizers for long-document language modeling.

Three kinds, one interface (:class:`TextTokenizer`):

- ``gpt2``: GPT-2's byte-level BPE (50,257 ids, ``<|endoftext|>`` = 50256), loaded with
  transformers' ``GPT2TokenizerFast`` from a local folder or the hub cache (``local_files_only`` by
  default, so nothing is downloaded unless asked);
- ``bpe``: a byte-level BPE trained with Hugging Face ``tokenizers`` on the training documents
  (configurable vocabulary size, ``<|endoftext|>`` as the only special token);
- ``bytes``: raw UTF-8 bytes (ids 0..255, EOS = 256), no training needed; one token = one byte.

Every tokenizer is saved next to a run (``tokenizer.json`` + ``tokenizer_meta.json``) and reloaded from
there, so evaluation encodes text exactly as training did.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..utils import check_int, write_json

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_KINDS = ("gpt2", "bpe", "bytes", "hf")
_META = "tokenizer_meta.json"
_JSON = "tokenizer.json"


class TextTokenizer:
    """Text <-> token ids with a document separator (EOS) id.

    ``backend`` is a ``tokenizers.Tokenizer`` for kinds ``gpt2``, ``bpe`` and ``hf`` (any Hugging Face
    fast tokenizer, whose EOS token is ``eos_token``) and ``None`` for ``bytes``.
    """

    def __init__(self, kind: str, backend: Any | None = None, eos_token: str = EOS_TOKEN) -> None:
        if kind not in TOKENIZER_KINDS:
            raise ValueError(f"kind must be one of {TOKENIZER_KINDS}, got {kind!r}")
        if (backend is None) != (kind == "bytes"):
            raise ValueError(
                f"backend: a tokenizers.Tokenizer is needed for kind {kind!r} (and none for bytes)"
            )
        self.kind = kind
        self.backend = backend
        if backend is not None:
            eos = backend.token_to_id(eos_token)
            if eos is None:
                raise ValueError(f"backend: the tokenizer has no {eos_token!r} token")
            self.eos_token = eos_token
            self.eos_id: int = int(eos)
            self.vocab_size: int = int(backend.get_vocab_size(with_added_tokens=True))
        else:
            self.eos_id = 256
            self.vocab_size = 257

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""
        if self.backend is None:
            return list(text.encode("utf-8"))
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.backend is None:
            return [self.encode(t) for t in texts]
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.backend is None:
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        return self.backend.decode(ids, skip_special_tokens=False)

    def fingerprint(self) -> str:
        """A hash that changes whenever the encoding could change (used to key token caches)."""
        body = self.kind if self.backend is None else self.kind + self.backend.to_str()
        return hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer_meta.json`` (+ ``tokenizer.json``) into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.backend is not None:
            self.backend.save(str(d / _JSON))
        meta = {"kind": self.kind, "eos_id": self.eos_id, "vocab_size": self.vocab_size}
        if self.backend is not None:
            meta["eos_token"] = self.eos_token
        write_json(d / _META, meta)
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TextTokenizer:
        """Reload a tokenizer written by :meth:`save`."""
        d = Path(directory)
        meta_path = d / _META
        if not meta_path.is_file():
            raise ValueError(
                f"directory: no {_META} in {str(d)!r} (expected a folder written by TextTokenizer.save)"
            )
        meta = json.loads(meta_path.read_text())
        kind = meta.get("kind")
        if kind == "bytes":
            return bytes_tokenizer()
        from tokenizers import Tokenizer

        tok = cls(kind, Tokenizer.from_file(str(d / _JSON)), meta.get("eos_token", EOS_TOKEN))
        if tok.eos_id != meta.get("eos_id") or tok.vocab_size != meta.get("vocab_size"):
            raise ValueError(f"directory: {str(d)!r} has a tokenizer.json that does not match its {_META}")
        return tok

    def __repr__(self) -> str:
        return f"TextTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def bytes_tokenizer() -> TextTokenizer:
    """UTF-8 bytes: vocabulary 257 (256 bytes + EOS)."""
    return TextTokenizer("bytes")


def gpt2_tokenizer(name_or_path: str | os.PathLike = "gpt2", local_files_only: bool = True) -> TextTokenizer:
    """GPT-2's BPE through transformers' ``GPT2TokenizerFast`` (a local folder or a hub name).

    With ``local_files_only=True`` (default) nothing is downloaded; a missing tokenizer raises ValueError.
    """
    try:
        from transformers import GPT2TokenizerFast
    except ImportError as e:  # pragma: no cover - transformers is in the [hf] extra
        raise ValueError(
            "gpt2 tokenizer: transformers is not installed (pip install 'infinite-former[hf]')"
        ) from e
    where = "locally (local_files_only=True)" if local_files_only else "locally or on the hub"
    p = Path(name_or_path)
    if p.is_dir() and not ((p / "tokenizer.json").is_file() or (p / "vocab.json").is_file()):
        raise ValueError(f"name_or_path: folder {str(p)!r} has no tokenizer.json or vocab.json")
    try:
        hf_tok = GPT2TokenizerFast.from_pretrained(str(name_or_path), local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"name_or_path: no GPT-2 tokenizer found at {str(name_or_path)!r} {where}: {e}"
        ) from e
    # transformers 5 may return an empty tokenizer instead of raising when nothing was found
    if hf_tok.backend_tokenizer.get_vocab_size(with_added_tokens=True) < 257:
        raise ValueError(f"name_or_path: no GPT-2 tokenizer found at {str(name_or_path)!r} {where}")
    return TextTokenizer("gpt2", hf_tok.backend_tokenizer)


def hf_tokenizer(name_or_path: str | os.PathLike, local_files_only: bool = True) -> TextTokenizer:
    """Any Hugging Face causal LM's fast tokenizer (a local folder or a hub name), its EOS as separator.

    GPT-2 folders give the same ids as :func:`gpt2_tokenizer`. With ``local_files_only=True``
    (default) nothing is downloaded; a missing or EOS-less tokenizer raises ValueError.
    """
    p = Path(name_or_path)
    if p.is_dir() and not ((p / "tokenizer.json").is_file() or (p / "vocab.json").is_file()):
        raise ValueError(f"name_or_path: folder {str(p)!r} has no tokenizer.json or vocab.json")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(name_or_path), local_files_only=local_files_only)
    except (OSError, ValueError) as e:
        raise ValueError(f"name_or_path: no tokenizer found at {str(name_or_path)!r}: {e}") from e
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None or tok.eos_token is None:
        raise ValueError(f"name_or_path: {str(name_or_path)!r} needs a fast tokenizer with an EOS token")
    return TextTokenizer("hf", backend, eos_token=tok.eos_token)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2
) -> TextTokenizer:
    """Train a byte-level BPE (HF ``tokenizers.ByteLevelBPETokenizer``) on ``texts``.

    ``vocab_size`` includes the 256 byte symbols and ``<|endoftext|>``.
    """
    check_int("vocab_size", vocab_size, 258)  # 256 bytes + EOS + at least one merge
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        special_tokens=[EOS_TOKEN],
    )
    return TextTokenizer("bpe", bpe._tokenizer)


def build_tokenizer(
    spec: str,
    train_texts: Iterable[str] | None = None,
    vocab_size: int = 4096,
    local_files_only: bool = True,
) -> TextTokenizer:
    """Pick a tokenizer from a spec.

    spec: ``auto`` (GPT-2 if found locally, else a BPE trained on ``train_texts``), ``gpt2``, ``bpe``,
    ``bytes``, a folder written by :meth:`TextTokenizer.save`, or a GPT-2 folder / hub name.
    """
    if spec == "bytes":
        return bytes_tokenizer()
    if spec == "bpe" or spec == "auto":
        if spec == "auto":
            try:
                return gpt2_tokenizer("gpt2", local_files_only=local_files_only)
            except ValueError:
                pass
        if train_texts is None:
            raise ValueError(f"train_texts: needed to train a BPE tokenizer (spec={spec!r})")
        return train_bpe_tokenizer(train_texts, vocab_size=vocab_size)
    if spec == "gpt2":
        return gpt2_tokenizer("gpt2", local_files_only=local_files_only)
    if (Path(spec) / _META).is_file():
        return TextTokenizer.load(spec)
    if Path(spec).is_dir() or "/" in spec:
        return gpt2_tokenizer(spec, local_files_only=local_files_only)
    raise ValueError(
        f"tokenizer: expected auto, gpt2, bpe, bytes, a saved tokenizer folder or a GPT-2 folder, got {spec!r}"
    )
