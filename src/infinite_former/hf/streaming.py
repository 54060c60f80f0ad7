"""InfiniteGPT2Stream: read any amount of text into the memory, then generate.

    stream = InfiniteGPT2Stream(model)            # any model with memory (add_memory), batch of 1
    stream.read(book_ids)                         # 100k tokens: ~200 blocks absorbed into the LTM
    new_ids = stream.generate(question_ids, max_new_tokens=32)
    more = stream.generate(max_new_tokens=16)     # continues: the memory survives between calls
    stream.reset()                                # forget everything

The stream is a user-visible holder of the explicit state: ``stream.memory``
(an HFMemoryState) and ``stream.last``, the newest token, which is kept
unfed so that generation always has a token whose logits start it. Tokens may
also be given as embeddings (a float tensor (T, e) or (batch, T, e)): ids next to
embeddings are embedded with the model's input embedding. The cost
of a generated token is the same however much text was read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .causal_lm import MemoryCausalLM
from .memory import HFMemoryState


class InfiniteGPT2Stream:
    """Streams of text through a causal LM with memory (InfiniteGPT2LMHeadModel or any model
    given one by add_memory), with the memory kept between calls."""

    def __init__(self, model: MemoryCausalLM, batch_size: int = 1, tokenizer: Any = None) -> None:
        if not isinstance(model, MemoryCausalLM):
            raise ValueError(
                f"model must have a memory (InfiniteGPT2LMHeadModel or add_memory(model)), got {type(model).__name__}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model = model
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.memory: HFMemoryState | None = None
        self.last: Tensor | None = None  # (batch, 1) newest token, not yet fed to the model
        self.reset()

    def reset(self) -> InfiniteGPT2Stream:
        """Forget everything read or generated."""
        self.memory = self.model.init_memory(self.batch_size)
        self.last = None
        return self

    @property
    def num_tokens(self) -> int:
        """Tokens read or generated so far (per stream)."""
        fed = int(self.memory.num_tokens.max()) if self.memory is not None else 0
        return fed + (0 if self.last is None else 1)

    def _ids(self, tokens: str | Sequence[int] | Tensor | None) -> Tensor:
        """Tokens as a (batch, T) LongTensor on the model's device, or embeddings as (batch, T, e)."""
        if isinstance(tokens, Tensor) and tokens.is_floating_point():
            embeds = tokens.to(self.model.device)
            if embeds.dim() == 2:
                embeds = embeds.unsqueeze(0).expand(self.batch_size, -1, -1)
            e = self.model.get_input_embeddings().embedding_dim
            if embeds.dim() != 3 or embeds.shape[0] != self.batch_size or embeds.shape[2] != e:
                raise ValueError(
                    f"embeddings must be (T, {e}) or ({self.batch_size}, T, {e}), got shape {tuple(tokens.shape)}"
                )
            return embeds
        if tokens is None:
            return torch.zeros(self.batch_size, 0, dtype=torch.long, device=self.model.device)
        if isinstance(tokens, str):
            if self.tokenizer is None:
                raise ValueError("text needs a tokenizer: InfiniteGPT2Stream(model, tokenizer=...)")
            tokens = self.tokenizer.encode(tokens)
        ids = torch.as_tensor(tokens, dtype=torch.long, device=self.model.device)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0).expand(self.batch_size, -1)
        if ids.dim() != 2 or ids.shape[0] != self.batch_size:
            raise ValueError(f"tokens must be (T,) or ({self.batch_size}, T), got shape {tuple(ids.shape)}")
        return ids

    def _after_last(self, tokens: Tensor) -> Tensor:
        """The unfed newest token followed by tokens; ids beside embeddings are embedded."""
        if self.last is None:
            return tokens
        parts = [self.last, tokens]
        if self.last.is_floating_point() != tokens.is_floating_point():
            embed = self.model.get_input_embeddings()
            parts = [p if p.is_floating_point() else embed(p) for p in parts]
        return torch.cat(parts, dim=1)

    def _call(self, tokens: Tensor, **kwargs: Any) -> Any:
        name = "inputs_embeds" if tokens.is_floating_point() else "input_ids"
        return self.model(**{name: tokens}, memory=self.memory, **kwargs)

    @torch.no_grad()
    def read(self, tokens: str | Sequence[int] | Tensor) -> InfiniteGPT2Stream:
        """Read tokens (text, ids (T,) or (batch, T), embeddings (T, e) or (batch, T, e)) into the
        memory, block by block."""
        ids = self._after_last(self._ids(tokens))
        if ids.shape[1] == 0:
            return self
        feed, self.last = ids[:, :-1], ids[:, -1:]
        start = 0
        while start < feed.shape[1]:
            room = self.memory.block_size - self.memory.position
            n = min(feed.shape[1] - start, room if room > 0 else self.memory.block_size)
            out = self._call(feed[:, start : start + n], logits_to_keep=1)
            self.memory = out.memory
            start += n
        return self

    @torch.no_grad()
    def generate(
        self,
        prompt: str | Sequence[int] | Tensor | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        **generate_kwargs: Any,
    ) -> Tensor:
        """Continue the stream after an optional prompt; returns the new ids (batch, new).

        Greedy by default (do_sample=False); other generate() options pass through. The prompt may
        be embeddings, like read's tokens.
        """
        ids = self._after_last(self._ids(prompt))
        if ids.shape[1] == 0:
            raise ValueError("nothing to continue: read() some text or give a prompt first")
        generate_kwargs.setdefault("pad_token_id", self.model.generation_config.eos_token_id)
        prompt = {"inputs_embeds": ids} if ids.is_floating_point() else {"inputs": ids}
        out = self.model.generate(
            **prompt,
            memory=self.memory,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            return_dict_in_generate=True,
            **generate_kwargs,
        )
        # from embeddings, transformers returns the new tokens only
        new = out.sequences if ids.is_floating_point() else out.sequences[:, ids.shape[1] :]
        self.memory = out.memory
        self.last = new[:, -1:]
        return new

    def decode(self, ids: Tensor) -> list[str]:
        """Decode (batch, T) ids with the stream's tokenizer."""
        if self.tokenizer is None:
            raise ValueError("decode needs a tokenizer: InfiniteGPT2Stream(model, tokenizer=...)")
        return [self.tokenizer.decode(row.tolist()) for row in ids]


class GPT2WindowStream:
    """Baseline stream for a plain causal LM (e.g. GPT2LMHeadModel): no memory, it sees
    only the last ``window`` tokens (default: its n_positions), recomputed at each
    generate call. Same read / generate / reset API as InfiniteGPT2Stream."""

    def __init__(self, model: Any, window: int | None = None, tokenizer: Any = None) -> None:
        positions = getattr(model.config, "n_positions", None) or model.config.max_position_embeddings
        self.window = window or positions
        if (
            isinstance(self.window, bool)
            or not isinstance(self.window, int)
            or not 1 < self.window <= positions
        ):
            raise ValueError(f"window must be an int in [2, {positions}], got {window!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.tokens = torch.zeros(1, 0, dtype=torch.long, device=model.device)
        self.seen = 0

    def reset(self) -> GPT2WindowStream:
        self.tokens = self.tokens[:, :0]
        self.seen = 0
        return self

    @property
    def num_tokens(self) -> int:
        return self.seen

    def _ids(self, tokens: Any) -> Tensor:
        if tokens is None:
            return self.tokens[:, :0]
        if isinstance(tokens, str):
            if self.tokenizer is None:
                raise ValueError("text needs a tokenizer: GPT2WindowStream(model, tokenizer=...)")
            tokens = self.tokenizer.encode(tokens)
        ids = torch.as_tensor(tokens, dtype=torch.long, device=self.model.device)
        return ids.unsqueeze(0) if ids.dim() == 1 else ids

    def read(self, tokens: Any) -> GPT2WindowStream:
        ids = self._ids(tokens)
        self.tokens = torch.cat([self.tokens, ids], dim=1)[:, -self.window :]
        self.seen += ids.shape[1]
        return self

    @torch.no_grad()
    def generate(
        self, prompt: Any = None, max_new_tokens: int = 32, do_sample: bool = False, **kwargs: Any
    ) -> Tensor:
        self.read(prompt)
        if self.tokens.shape[1] == 0:
            raise ValueError("nothing to continue: read() some text or give a prompt first")
        if max_new_tokens >= self.window:
            raise ValueError(f"max_new_tokens must be < window ({self.window}), got {max_new_tokens}")
        ids = self.tokens[:, -(self.window - max_new_tokens) :]
        kwargs.setdefault("pad_token_id", self.model.generation_config.eos_token_id)
        out = self.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            **kwargs,
        )
        new = out[:, ids.shape[1] :]
        self.read(new)
        return new


__all__ = ["GPT2WindowStream", "InfiniteGPT2Stream"]
