"""GPT-2 with the ∞-former's unbounded long-term memory, as a transformers model.

InfiniteGPT2LMHeadModel keeps GPT-2's modules and weight names (so any GPT-2
checkpoint loads into it) and adds one LongTermAttention per memory layer
(``ltm.{k}.*``, zero-initialised output: the model starts equal to GPT-2).

Short-term / long-term memory (PAPER §2-5, GPT-2 recipe):

* Text is processed in sequential blocks of L = config.block_size tokens.
  Inside a block, token i attends causally to the block's tokens 0..i with
  GPT-2's attention (position ids restart at 0 each block) and, through the
  long-term attention, to the memory signal X̄(t) = Bᵀψ(t).
* In layer l the LTM queries are the ln_1 outputs of the current tokens, and
  its output (after its W_O) is added to GPT-2's attention output (after
  c_proj), before the residual: h + attn(ln_1 h) + ltm(ln_1 h).
* When a block is complete and the next token arrives, the block's layer-l
  input hidden states (residual stream) are absorbed into layer l's memory
  (gate, contraction by τ, M samples, refit of B: cost independent of the
  tokens read) and the short-term KV cache is cleared.

All of this state lives in an InfiniteGPT2Memory passed in (``memory=``) and
returned (``out.memory``); the module keeps none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.models.gpt2.modeling_gpt2 import GPT2Model, GPT2PreTrainedModel
from transformers.utils import ModelOutput

from ..attention import LongTermAttention
from ..basis import GaussianBasis
from .configuration import InfiniteGPT2Config
from .memory import KV, InfiniteGPT2Memory


@dataclass
class InfiniteGPT2Output(ModelOutput):
    """loss = lm_loss + kl_weight · kl (KL only in training mode; kl is None in eval mode
    under torch.no_grad, where it is not computed); logits (batch, T or
    logits_to_keep, vocab); memory: the state after these tokens; cache (also readable
    as .past_key_values): the short-term KV cache of the current block, i.e. memory.kv."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    memory: InfiniteGPT2Memory | None = None
    cache: tuple[KV, ...] | None = None
    lm_loss: Tensor | None = None
    kl: Tensor | None = None


class InfiniteGPT2LMHeadModel(GPT2PreTrainedModel, GenerationMixin):
    """GPT-2 LM + a long-term memory (LongTermAttention) in every memory layer.

    forward(input_ids (batch, T), memory=None, labels=None) -> InfiniteGPT2Output.
    T may be anything: the tokens are split at block boundaries internally.
    """

    config_class = InfiniteGPT2Config
    config: InfiniteGPT2Config
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    _no_split_modules = ["GPT2Block", "LongTermAttention"]

    def __init__(self, config: InfiniteGPT2Config) -> None:
        if not isinstance(config, InfiniteGPT2Config):
            raise ValueError(f"config must be an InfiniteGPT2Config, got {type(config).__name__}")
        config.check_memory_fields()
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        ltm_config = config.ltm_config()
        self.ltm = nn.ModuleList([LongTermAttention(ltm_config) for _ in config.memory_layer_ids])
        self.post_init()

    # ------------------------------------------------------------ HF plumbing

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2's init; LTM output projections W_O start at zero (the model starts equal to
        GPT-2); the RBF layout buffers (not saved in checkpoints) are rebuilt."""
        super()._init_weights(module)
        if any(module is m.out for m in self.ltm):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, GaussianBasis):
            fresh = GaussianBasis(module.num_basis, module.widths)
            for name, buffer in fresh.named_buffers():
                getattr(module, name).copy_(buffer)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def memory_parameters(self) -> list[nn.Parameter]:
        """The new (LTM) weights, e.g. for their own learning rate when fine-tuning."""
        return list(self.ltm.parameters())

    def base_parameters(self) -> list[nn.Parameter]:
        """GPT-2's own weights."""
        ids = {id(p) for p in self.memory_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def param_groups(
        self, lr: float = 5e-5, memory_lr: float = 2.5e-4, weight_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """Optimizer groups for the paper's fine-tuning: GPT-2 weights at lr, memory weights at memory_lr."""
        for name, value in (("lr", lr), ("memory_lr", memory_lr), ("weight_decay", weight_decay)):
            if not (value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        return [
            {"params": self.base_parameters(), "lr": lr, "weight_decay": weight_decay},
            {"params": self.memory_parameters(), "lr": memory_lr, "weight_decay": weight_decay},
        ]

    # ------------------------------------------------------------------ memory

    def init_memory(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> InfiniteGPT2Memory:
        """An empty memory (no LTM content, empty short-term block) for batch_size streams."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        device = device if device is not None else self.device
        dtype = dtype or self.dtype
        c = self.config
        h, d = c.n_head, c.n_embd // c.n_head
        empty_kv = torch.zeros(batch_size, h, 0, d, device=device, dtype=dtype)
        return InfiniteGPT2Memory(
            ltm=tuple(m.init_state(batch_size, device, dtype) for m in self.ltm),
            pending=tuple(torch.zeros(batch_size, 0, c.n_embd, device=device, dtype=dtype) for _ in self.ltm),
            kv=tuple((empty_kv, empty_kv) for _ in range(c.n_layer)),
            keep=torch.ones(batch_size, dtype=torch.bool, device=device),
            num_tokens=torch.zeros(batch_size, dtype=torch.long, device=device),
            block_size=c.block_size,
        )

    def absorb_block(self, memory: InfiniteGPT2Memory) -> InfiniteGPT2Memory:
        """Absorb the pending block into each layer's LTM and clear the short-term block.

        Called automatically when a token arrives after a complete block. Sticky
        sampling uses the attention mass the block's queries put on the old memory.
        """
        states = []
        for ltm, state, pending in zip(self.ltm, memory.ltm, memory.pending, strict=True):
            new = ltm.update(state, pending)
            new = replace(new, bin_mass=torch.zeros_like(new.bin_mass))
            if not bool(memory.keep.all()):
                new = new.reset(~memory.keep)
            states.append(new)
        return InfiniteGPT2Memory(
            ltm=tuple(states),
            pending=tuple(p.new_empty(p.shape[0], 0, p.shape[2]) for p in memory.pending),
            kv=tuple((_empty_like_block(k), _empty_like_block(v)) for k, v in memory.kv),
            keep=torch.ones_like(memory.keep),
            num_tokens=memory.num_tokens,
            block_size=memory.block_size,
            ltm_cache=None,
        )

    def _check_memory(self, memory: InfiniteGPT2Memory, batch_size: int) -> None:
        if not isinstance(memory, InfiniteGPT2Memory):
            raise ValueError(f"memory must be an InfiniteGPT2Memory or None, got {type(memory).__name__}")
        if memory.batch_size != batch_size:
            raise ValueError(f"memory has batch size {memory.batch_size} but input_ids has {batch_size}")
        if len(memory.ltm) != len(self.ltm) or len(memory.kv) != self.config.n_layer:
            raise ValueError("memory was made for a model with other layers / memory layers")
        if memory.block_size != self.config.block_size:
            raise ValueError(
                f"memory has block_size {memory.block_size} but the model uses {self.config.block_size}"
            )

    # ----------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        memory: InfiniteGPT2Memory | None = None,
        labels: torch.LongTensor | None = None,
        attention_mask: Tensor | None = None,
        logits_to_keep: int = 0,
        shift_labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        past_key_values: Any = None,
        cache: Any = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> InfiniteGPT2Output | tuple:
        """Process input_ids (batch, T) after the text already in ``memory``.

        labels: (batch, T), shifted inside (as in GPT2LMHeadModel), -100 ignored;
        the loss covers the T - 1 predictions inside this call.
        shift_labels: (batch, T), already shifted: shift_labels[:, i] is the target of
        input_ids[:, i] (as in transformers' loss functions); with it, a stream fed in
        pieces is scored on every token, e.g. inputs x[t:t+T], shift_labels x[t+1:t+T+1].
        logits_to_keep: 0 = logits for every token, k > 0 = only the last k.
        attention_mask: accepted for GenerationMixin; padding (zeros) is not supported.
        The short-term KV cache is part of ``memory``; past_key_values / cache must be None.
        """
        if input_ids is None or not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (batch, T) LongTensor, got {_describe(input_ids)}")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids must hold at least one token")
        if past_key_values is not None or cache is not None:
            raise ValueError(
                "InfiniteGPT2LMHeadModel keeps its short-term KV cache inside `memory`; pass memory=, not a cache"
            )
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("attention_mask with padding (zeros) is not supported: streams must be unpadded")
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
        batch, total = input_ids.shape
        if memory is None:
            memory = self.init_memory(batch, input_ids.device)
        self._check_memory(memory, batch)
        for name, lab in (("labels", labels), ("shift_labels", shift_labels)):
            if lab is not None and (not isinstance(lab, Tensor) or tuple(lab.shape) != (batch, total)):
                raise ValueError(
                    f"{name} must have the shape of input_ids {(batch, total)}, got {_describe(lab)}"
                )
        if labels is not None and shift_labels is not None:
            raise ValueError("give labels or shift_labels, not both")

        block = self.config.block_size
        hidden, kl_sum, kl_count = [], 0.0, 0
        start = 0
        while start < total:
            if memory.position == block:
                memory = self.absorb_block(memory)
            n = min(total - start, block - memory.position)
            h, memory, seg_kl, seg_count = self._segment(input_ids[:, start : start + n], memory)
            hidden.append(h)
            kl_sum, kl_count = kl_sum + seg_kl, kl_count + seg_count
            start += n
        h = torch.cat(hidden, dim=1) if len(hidden) > 1 else hidden[0]
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h)

        kl = None  # the KL regularizer is computed when training or with gradients on
        if self.training or torch.is_grad_enabled():
            kl = torch.as_tensor(kl_sum, dtype=torch.float32, device=logits.device) / max(kl_count, 1)
        lm_loss = loss = None
        if labels is not None or shift_labels is not None:
            if logits_to_keep:
                raise ValueError("labels need the logits of every token: use logits_to_keep=0")
            if shift_labels is None:
                pred, target = logits[:, :-1], labels[:, 1:]
            else:
                pred, target = logits, shift_labels
            lm_loss = F.cross_entropy(
                pred.reshape(-1, logits.shape[-1]).float(),
                target.reshape(-1).to(logits.device),
                ignore_index=-100,
            )
            loss = lm_loss
            if self.training and self.config.kl_weight > 0 and self.ltm:
                loss = lm_loss + self.config.kl_weight * kl
        out = InfiniteGPT2Output(
            loss=loss, logits=logits, memory=memory, cache=memory.kv, lm_loss=lm_loss, kl=kl
        )
        return out if return_dict is not False else out.to_tuple()

    def _segment(
        self, ids: Tensor, memory: InfiniteGPT2Memory
    ) -> tuple[Tensor, InfiniteGPT2Memory, Tensor | float, int]:
        """Run n tokens that fit in the current block: (hidden (b, n, e) after ln_f, memory, KL sum, count)."""
        tr = self.transformer
        b, n = ids.shape
        pos = memory.position
        position_ids = torch.arange(pos, pos + n, device=ids.device)
        h = tr.drop(tr.wte(ids) + tr.wpe(position_ids))
        mask = None
        if pos > 0 and n > 1:  # token i sees the block's tokens 0 .. pos + i
            mask = torch.ones(n, pos + n, dtype=torch.bool, device=ids.device).tril(diagonal=pos)
        is_causal = pos == 0 and n > 1

        kv_out: list[KV] = []
        pending_out: list[Tensor] = []
        states_out = []
        cache_out = []
        kl_sum: Tensor | float = 0.0
        kl_count = 0
        mem_index = {layer: k for k, layer in enumerate(self.config.memory_layer_ids)}
        need_kl = self.training or torch.is_grad_enabled()  # the KL regularizer is a training term
        for layer, blk in enumerate(tr.h):
            k = mem_index.get(layer)
            if k is not None:
                pending_out.append(torch.cat([memory.pending[k], h], dim=1))
            x = blk.ln_1(h)
            attn_out, kv = _gpt2_self_attention(blk.attn, x, memory.kv[layer], mask, is_causal)
            kv_out.append(kv)
            if k is not None:
                ltm = self.ltm[k]
                state = memory.ltm[k]
                use_cache = memory.ltm_cache is not None and not torch.is_grad_enabled()
                proj = memory.ltm_cache[k] if use_cache else None
                if proj is None:  # (with gradients on, always recompute: they must reach W_V, W_K, W_Q)
                    proj = ltm.projections(state, x.dtype)
                cache_out.append(proj)
                # the block's attention mass accumulates over its calls (sticky sampling)
                z, new_state, kl = ltm.read(x, state, proj, return_kl=need_kl, accumulate_mass=True)
                states_out.append(new_state)
                attn_out = attn_out + blk.attn.resid_dropout(z)
                if kl is not None:
                    rows = int((state.length > 0).sum())
                    kl_sum = kl_sum + kl.sum()
                    kl_count += rows * kl.shape[1] * kl.shape[2]
            h = h + attn_out
            h = h + blk.mlp(blk.ln_2(h))
        h = tr.ln_f(h)
        memory = InfiniteGPT2Memory(
            ltm=tuple(states_out),
            pending=tuple(pending_out),
            kv=tuple(kv_out),
            keep=memory.keep,
            num_tokens=memory.num_tokens + n,
            block_size=memory.block_size,
            # keep the projections for the next tokens of this block only at inference:
            # with gradients on, the weights may change before the next call
            ltm_cache=tuple(cache_out) if not torch.is_grad_enabled() else None,
        )
        return h, memory, kl_sum, kl_count

    # --------------------------------------------------------------- generate

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the short-term KV cache lives in the memory object

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        memory: InfiniteGPT2Memory | None = None,
        is_first_iteration: bool | None = False,
        memory_sink: list | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Prefill: the whole prompt (it is new text after ``memory``); then one token per step."""
        ids = input_ids if is_first_iteration else input_ids[:, -1:]
        return {
            "input_ids": ids.contiguous(),
            "memory": memory,
            "logits_to_keep": 1,
            "attention_mask": kwargs.get("attention_mask"),
        }

    def _update_model_kwargs_for_generation(
        self,
        outputs: ModelOutput,
        model_kwargs: dict[str, Any],
        is_encoder_decoder: bool = False,
        num_new_tokens: int = 1,
    ) -> dict[str, Any]:
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        model_kwargs.pop("cache", None)  # the KV cache travels inside the memory
        model_kwargs["memory"] = outputs.memory
        sink = model_kwargs.get("memory_sink")
        if sink is not None:
            sink[:] = [outputs.memory]
        return model_kwargs

    @torch.no_grad()
    def generate(self, inputs: Tensor | None = None, memory: InfiniteGPT2Memory | None = None, **kwargs: Any):
        """GenerationMixin.generate, continuing after the text in ``memory``.

        ``inputs`` is the new prompt (tokens not yet in the memory, at least one).
        With return_dict_in_generate=True the output also has ``.memory``: the
        state after the prompt and all generated tokens but the last (which was
        not fed back). Greedy and sampling work; beam search is not supported.
        """
        if kwargs.get("num_beams", 1) != 1 or kwargs.get("num_return_sequences", 1) != 1:
            raise ValueError("num_beams and num_return_sequences must be 1 (beam search is not supported)")
        if kwargs.get("use_cache") is False:
            raise ValueError("use_cache=False is not supported: the memory is the cache")
        if inputs is None and kwargs.get("input_ids") is None:
            raise ValueError("generate needs a prompt of at least one new token (inputs)")
        if memory is not None and not isinstance(memory, InfiniteGPT2Memory):
            raise ValueError(f"memory must be an InfiniteGPT2Memory or None, got {type(memory).__name__}")
        prompt = inputs if inputs is not None else kwargs["input_ids"]
        if isinstance(prompt, Tensor) and kwargs.get("attention_mask") is None:
            # streams are unpadded: don't let generate() guess padding from pad_token_id
            kwargs["attention_mask"] = torch.ones_like(prompt)
        sink: list = []
        out = super().generate(inputs, memory=memory, memory_sink=sink, **kwargs)
        if isinstance(out, ModelOutput):
            out["memory"] = sink[0] if sink else memory
        return out


def _gpt2_self_attention(
    attn: nn.Module, x: Tensor, past: KV, mask: Tensor | None, is_causal: bool
) -> tuple[Tensor, KV]:
    """GPT-2's causal self-attention over the block so far (past keys/values + x).

    Uses GPT-2's own projections (c_attn, c_proj), scaling and dropouts with
    torch's scaled_dot_product_attention. Returns (output after c_proj, (K, V)).
    """
    b, n, e = x.shape
    heads, d = attn.num_heads, attn.head_dim
    q, k, v = attn.c_attn(x).split(e, dim=2)
    q = q.view(b, n, heads, d).transpose(1, 2)
    k = torch.cat([past[0], k.view(b, n, heads, d).transpose(1, 2)], dim=2)
    v = torch.cat([past[1], v.view(b, n, heads, d).transpose(1, 2)], dim=2)
    out = F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=attn.attn_dropout.p if attn.training else 0.0,
        is_causal=is_causal,
        scale=_attention_scale(attn),
    )
    out = out.transpose(1, 2).reshape(b, n, e)
    return attn.resid_dropout(attn.c_proj(out)), (k, v)


def _empty_like_block(x: Tensor) -> Tensor:
    """(batch, H, 0, d): an empty block that does not keep x's storage alive."""
    return x.new_empty(x.shape[0], x.shape[1], 0, x.shape[3])


def _attention_scale(attn: nn.Module) -> float:
    if hasattr(attn, "scaling"):
        return float(attn.scaling)
    scale = attn.head_dim**-0.5 if attn.scale_attn_weights else 1.0
    if attn.scale_attn_by_inverse_layer_idx:
        scale /= float(attn.layer_idx + 1)
    return scale


def _describe(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


__all__ = ["InfiniteGPT2LMHeadModel", "InfiniteGPT2Output"]
