"""Hugging Face models with memory for the project's Trainer and evaluation loops.

``HFMemoryLM`` puts any model with memory (``add_memory`` / ``InfiniteGPT2LMHeadModel``) behind the
Trainer's model interface (``out, state = model(tokens, state, targets=, loss_mask=)``,
``init_state``); its recurrent state is the model's own ``HFMemoryState`` (reset / detach / to /
state_dict / from_state_dict). ``evaluate_hf_pair`` compares the plain model and the model with
memory on the same blocks of long documents (result keys ``gpt2`` / ``gpt2_memory`` /
``gpt2_finetuned`` whatever the architecture, for compatibility).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.text import TokenizedCorpus
from ..training.evaluation import evaluate_documents
from .memory import InfiniteGPT2Memory


@dataclass
class _LMOut:
    logits: Tensor
    loss: Tensor | None
    aux_loss: Tensor


class HFMemoryLM(nn.Module):
    """A model with memory behind the Trainer's ``out, state = model(tokens, state, targets, loss_mask)``.

    Each call must be one block of ``memory_config.block_size`` tokens (the memory is absorbed at block
    boundaries); loss = mean CE over masked targets, aux_loss = kl_weight · KL (training only).
    """

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> InfiniteGPT2Memory:
        return self.hf.init_memory(batch_size, device)

    def forward(
        self,
        tokens: Tensor,
        state: InfiniteGPT2Memory | None = None,
        targets: Tensor | None = None,
        loss_mask: Tensor | None = None,
    ) -> tuple[_LMOut, InfiniteGPT2Memory]:
        out = self.hf(tokens, memory=state)
        loss = None
        if targets is not None:
            nll = F.cross_entropy(out.logits.float().transpose(1, 2), targets, reduction="none")
            mask = torch.ones_like(targets, dtype=torch.bool) if loss_mask is None else loss_mask
            loss = (nll * mask).sum() / mask.sum().clamp_min(1)
        kl_w = float(self.hf.memory_config.ltm.kl_weight)
        use_kl = self.hf.training and kl_w > 0 and len(self.hf.ltm) and out.kl is not None
        aux = kl_w * out.kl if use_kl else out.logits.new_zeros(())
        return _LMOut(out.logits, loss, aux), out.memory


def evaluate_hf_pair(
    memory_model: nn.Module | None,
    plain_model: nn.Module | None,
    corpus: TokenizedCorpus,
    block_size: int,
    batch_size: int,
    eos_id: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The plain model (each block alone) and the model with memory (blocks in order, memory reset per document),
    on the same blocks of ``block_size`` tokens: per-document and corpus ppl and bpb."""
    res: dict[str, Any] = {}
    if plain_model is not None:
        plain_model.eval()
        n_pos = _max_positions(plain_model.config)
        res["gpt2"] = evaluate_documents(
            lambda t, s: (plain_model(t).logits, None),
            lambda b: None,
            corpus,
            batch_size,
            block_size,
            eos_id,
            device,
            max_positions=n_pos,
        )
    if memory_model is not None:
        memory_model.eval()
        if memory_model.memory_config.block_size != block_size:
            raise ValueError(
                f"block_size={block_size} differs from the memory model's "
                f"block_size={memory_model.memory_config.block_size}"
            )
        wrapped = HFMemoryLM(memory_model)

        def step(t: Tensor, s: InfiniteGPT2Memory) -> tuple[Tensor, InfiniteGPT2Memory]:
            out, s = wrapped(t, s)
            return out.logits, s

        # a model fine-tuned with --no-memory has no LTM layers: it is GPT-2 on the same blocks
        res["gpt2_memory" if len(memory_model.ltm) else "gpt2_finetuned"] = evaluate_documents(
            step,
            lambda b: wrapped.init_state(b, device),
            corpus,
            batch_size,
            block_size,
            eos_id,
            device,
            max_positions=memory_model.decoder_layout.max_positions,
        )
    return res


@dataclass
class _PreviousBlock:
    """The window evaluation's state: each lane's previous block (batch, L) and whether it has one."""

    tokens: Tensor
    valid: Tensor  # (batch,) bool

    def reset(self, rows: Tensor) -> _PreviousBlock:
        return _PreviousBlock(self.tokens, self.valid & ~rows.to(self.valid.device))


def evaluate_window(
    plain_model: nn.Module,
    corpus: TokenizedCorpus,
    block_size: int,
    batch_size: int,
    eos_id: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The plain model reading each block of ``block_size`` tokens with the previous block of its
    document in its window (2 × block_size positions; the first block of a document alone).

    The baseline that a memory of about one block must beat: the same blocks and targets as
    :func:`evaluate_hf_pair`, with up to block_size more tokens of context and no memory.
    """
    n_pos = _max_positions(plain_model.config)
    if n_pos is not None and 2 * block_size > n_pos:
        raise ValueError(
            f"block_size={block_size}: the window of 2 blocks exceeds the model's {n_pos} positions"
        )
    plain_model.eval()

    def step(t: Tensor, s: _PreviousBlock) -> tuple[Tensor, _PreviousBlock]:
        b, n = t.shape
        ids = torch.cat([s.tokens, t], dim=1)  # (batch, 2L)
        mask = torch.cat([s.valid[:, None].expand(-1, n), torch.ones_like(t, dtype=torch.bool)], dim=1)
        # a lane without a previous block reads its block at positions 0..L-1, as alone
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        logits = plain_model(input_ids=ids, attention_mask=mask.long(), position_ids=positions).logits
        return logits[:, n:], _PreviousBlock(t, torch.ones(b, dtype=torch.bool, device=t.device))

    def init(b: int) -> _PreviousBlock:
        return _PreviousBlock(
            torch.full((b, block_size), eos_id, dtype=torch.long, device=device),
            torch.zeros(b, dtype=torch.bool, device=device),
        )

    return evaluate_documents(step, init, corpus, batch_size, block_size, eos_id, device, max_positions=None)


def _max_positions(config: Any) -> int | None:
    """The positions a model can take: GPT-2's n_positions or max_position_embeddings."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


__all__ = ["HFMemoryLM", "evaluate_hf_pair", "evaluate_window"]
