"""An unbounded ∞-former memory for any transformers causal LM (PAPER §2-5, GPT-2 recipe).

    model = add_memory(AutoModelForCausalLM.from_pretrained(...), block_size=512, num_basis=512)
    out = model(input_ids, memory=None, labels=input_ids)      # out.memory: the new state
    gen = model.generate(prompt_ids, memory=out.memory, max_new_tokens=32)

``add_memory`` attaches one ``LongTermAttention`` per memory layer (``model.ltm``, output
projection zero: the model starts equal to the base model on each block) and gives the model
this module's forward and generate, by making it an instance of a subclass of its own class
(same name, same weights; no modeling file is copied). The block scheme, for every model:

* text is processed in sequential blocks of L = block_size tokens. Inside a block, a token
  attends causally to its block's tokens with the model's own attention (positions restart at
  0 each block; the block's own KV cache) and to the long-term memory X̄(t) = Bᵀψ(t);
* in every memory layer, the memory is read with the layer's normalised hidden states (the
  input of its self-attention) as queries, and its output is added to the attention output;
* when a row's block is complete and its next token arrives, the block's layer-input hidden
  states (residual stream) are absorbed into each layer's memory (gate, contraction by τ, M
  samples, refit of B: a cost independent of the tokens read) and its KV cache is dropped.

Gradient checkpointing (``model.gradient_checkpointing_enable()``, non-reentrant) works: a
checkpointed layer's recomputation repeats its memory read (same output, same graph) without a
second effect on the state, and the block's KV cache survives it (``_BlockLayer``).

Rows are independent: with left padding (``attention_mask`` zeros) every row has its own block
length and positions, so a padded batch gives each row what it gets alone. The whole state
lives in an ``HFMemoryState`` passed in (``memory=``) and returned (``out.memory``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from ..attention import LongTermAttention, LTMRecord, MemoryProjections, ReadRecord
from ..memory import LTMState, UpdateRecord
from ..provenance import check_fingerprint
from .layout import DecoderLayout, base_fingerprint, find_layout
from .memory import HFMemoryState
from .memory_config import MemoryConfig
from .training_free import BlockAttention, TrainingFreeConfig, TrainingFreeMemory

ADAPTER_WEIGHTS = "memory_adapter.safetensors"
ADAPTER_CONFIG = "memory_config.json"


@dataclass
class SegmentRecord:
    """What the memory did for one segment of a forward call (``return_record=True``): the tokens
    start .. start + length - 1 of the call, which fit in every row's current block.

    layers: per memory layer, an LTMRecord: the absorption of the finished blocks just before the
    segment (its UpdateRecord, ``absorbed``: the rows whose block was absorbed; none if no row's
    block was full) and the read of the segment's queries (μ, σ² (batch, H, length)).
    """

    start: int
    length: int
    layers: tuple[LTMRecord, ...]


@dataclass
class MemoryCausalLMOutput(ModelOutput):
    """loss = lm_loss + kl_weight · kl (KL only in training mode); logits (batch, T or
    logits_to_keep, vocab); memory: the state after these tokens (also as ``cache``, the name
    generate() carries between steps); kl is None when no gradients are computed; record: with
    return_record=True, what the memory did, one SegmentRecord per segment, in order (else None)."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    memory: HFMemoryState | None = None
    cache: HFMemoryState | None = None
    lm_loss: Tensor | None = None
    kl: Tensor | None = None
    record: list[SegmentRecord] | None = None


class MemoryCausalLM:
    """Mixin put in front of a transformers causal-LM class: the block scheme + long-term memory.

    Needs ``self.ltm`` (nn.ModuleList of LongTermAttention, one per memory layer) and
    ``self.memory_config`` (a resolved MemoryConfig); ``attach_memory`` sets both.
    """

    memory_config: MemoryConfig
    ltm: nn.ModuleList
    training_free: TrainingFreeConfig | None = None

    # ------------------------------------------------------------------ attaching

    def attach_memory(self, config: MemoryConfig, training_free: TrainingFreeConfig | None = None) -> None:
        """Build the LongTermAttention modules for this model's decoder layers (zero output), or with
        training_free, the parameter-free memories read through each layer's own attention."""
        self.memory_config, self.ltm = _new_memory(self, self.decoder_layout, config, training_free)
        self.training_free = training_free

    @property
    def memory_settings(self) -> dict[str, Any]:
        """add_memory's keywords that rebuild this memory (config.infinite_memory, memory_config.json)."""
        settings = self.memory_config.to_dict()
        if self.training_free is not None:
            settings["training_free"] = self.training_free.to_dict()
        return settings

    @property
    def decoder_layout(self) -> DecoderLayout:
        layout = self.__dict__.get("_decoder_layout")
        if layout is None:  # found once; modules are kept by reference (FSDP wrapping keeps them)
            layout = find_layout(self, super().forward)
            self.__dict__["_decoder_layout"] = layout
        return layout

    def memory_fingerprint(self) -> dict[str, Any]:
        """What a memory state must have been made by (provenance.py): the base model (class, type,
        e, H, layers) and the memory's N, D, memory layers and schedule (L, τ, contraction schedule
        and p, sticky)."""
        c, layout = self.memory_config, self.decoder_layout
        return {
            **base_fingerprint(self, layout),
            "num_basis": c.ltm.num_basis,
            "num_bins": c.ltm.num_bins,
            "memory_layers": c.layer_ids(len(layout.layers)),
            "block_size": c.block_size,
            "tau": c.ltm.tau,
            "schedule": c.ltm.schedule,
            "power": c.ltm.power,
            "sticky": c.ltm.sticky,
            # a training-free memory holds the attention inputs, read through the layer's own weights
            "training_free": None if self.training_free is None else self.training_free.to_dict(),
        }

    def memory_parameters(self) -> list[nn.Parameter]:
        """The memory (LTM) weights, e.g. for their own learning rate when fine-tuning."""
        return list(self.ltm.parameters())

    def base_parameters(self) -> list[nn.Parameter]:
        """The base model's own weights."""
        ids = {id(p) for p in self.memory_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def param_groups(
        self, lr: float = 5e-5, memory_lr: float = 2.5e-4, weight_decay: float = 0.0
    ) -> list[dict[str, Any]]:
        """Optimizer groups of the paper's fine-tuning: base weights at lr, memory weights at memory_lr.

        Only weights with requires_grad are listed (e.g. under LoRA: the adapters and the memory).
        """
        for name, value in (("lr", lr), ("memory_lr", memory_lr), ("weight_decay", weight_decay)):
            if not (value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        return [
            {
                "params": [p for p in self.base_parameters() if p.requires_grad],
                "lr": lr,
                "weight_decay": weight_decay,
            },
            {
                "params": [p for p in self.memory_parameters() if p.requires_grad],
                "lr": memory_lr,
                "weight_decay": weight_decay,
            },
        ]

    def save_memory(self, directory: str | os.PathLike) -> Path:
        """Write the memory weights (``memory_adapter.safetensors``) and settings with the base
        model's name, class and type (``memory_config.json``) to ``directory``; see adapter.py."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"ltm.{name}": p.detach().cpu().contiguous() for name, p in self.ltm.state_dict().items()}
        save_file(tensors, out / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        info = {
            "base_model_name_or_path": getattr(self.config, "_name_or_path", None) or None,
            "base_model_class": type(self).__name__,
            "base_model_type": self.config.model_type,
            "base_model": base_fingerprint(self, self.decoder_layout),
            "memory_config": self.memory_settings,
            # the host's sizes the memory was trained with (the weights alone do not show the heads)
            "memory_host": {
                "d_model": self.decoder_layout.hidden_size,
                "n_heads": self.decoder_layout.num_heads,
            },
        }
        (out / ADAPTER_CONFIG).write_text(json.dumps(info, indent=2) + "\n")
        return out

    # ------------------------------------------------------------------ state

    def init_memory(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> HFMemoryState:
        """An empty memory (no LTM content, empty short-term block) for batch_size streams."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        device = device if device is not None else self.device
        dtype = dtype or self.dtype
        e = self.decoder_layout.hidden_size
        return HFMemoryState(
            ltm=tuple(m.init_state(batch_size, device, dtype) for m in self.ltm),
            pending=tuple(torch.zeros(batch_size, 0, e, device=device, dtype=dtype) for _ in self.ltm),
            kv=(),
            slots=torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
            num_tokens=torch.zeros(batch_size, dtype=torch.long, device=device),
            block_size=self.memory_config.block_size,
            fingerprint=self.memory_fingerprint(),
        )

    def absorb_blocks(
        self, memory: HFMemoryState, partial: bool = False, *, return_record: bool = False
    ) -> HFMemoryState | tuple[HFMemoryState, tuple[UpdateRecord, ...]]:
        """Absorb every complete block (rows with block_size tokens) into each layer's LTM.

        Called when tokens arrive after a complete block. Sticky sampling uses the attention
        mass the block's queries put on the old memory, which then starts again from zero.
        The update is computed for all rows and kept for the full ones, so the random draws
        of sticky sampling do not depend on which rows are full. partial=True also absorbs
        shorter blocks (every row holding tokens; those rows must hold equally many), e.g. to
        end a block at a document or turn boundary. return_record: also the UpdateRecord of each
        memory layer's absorption (``absorbed``: the rows absorbed), () when nothing was absorbed.
        """
        lengths = memory.block_lengths
        full = lengths > 0 if partial else lengths >= memory.block_size  # (batch,)
        if not bool(full.any()):
            return (memory, ()) if return_record else memory
        n = int(lengths[full].max()) if partial else memory.block_size
        if partial and bool((lengths[full] != n).any()):
            raise ValueError(
                f"absorb_blocks(partial=True): rows holding tokens must hold equally many, got {lengths.tolist()}"
            )
        all_full = bool(full.all())
        # the slots of each row's block, in order (an absorbed row has exactly n of them)
        order = torch.argsort((~memory.slots).to(torch.int8), dim=1, stable=True)[:, :n]
        states, updates = [], []
        for ltm, state, pending in zip(self.ltm, memory.ltm, memory.pending, strict=True):
            block = pending.gather(1, order[..., None].expand(-1, -1, pending.shape[-1]))  # (batch, L, e)
            # the update as a module call: FSDP gathers its weights (hf/fsdp.py)
            new = ltm(None, block, state, return_record=return_record)
            if return_record:
                new, record = new
                updates.append(record.updates[0].only(full))
            if not all_full:
                new = _where_rows(full, new, state)
            states.append(LTMState(new.coeffs, new.length, state.bin_mass * ~full[:, None]))
        absorbed = HFMemoryState(
            ltm=tuple(states),
            pending=memory.pending,
            kv=memory.kv,
            slots=memory.slots & ~full[:, None],
            num_tokens=memory.num_tokens,
            block_size=memory.block_size,
            fingerprint=memory.fingerprint,
        ).compact()
        return (absorbed, tuple(updates)) if return_record else absorbed

    def _check_inputs(self, input_ids: Any, inputs_embeds: Any) -> Tensor:
        """input_ids (batch, T) or inputs_embeds (batch, T, e), exactly one, T >= 1: the one given."""
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("give input_ids or inputs_embeds, not both")
        if inputs_embeds is not None:
            e = self.get_input_embeddings().embedding_dim
            if (
                not isinstance(inputs_embeds, Tensor)
                or inputs_embeds.dim() != 3
                or inputs_embeds.shape[-1] != e
                or not inputs_embeds.is_floating_point()
            ):
                raise ValueError(
                    f"inputs_embeds must be a (batch, T, {e}) float tensor, got {_describe(inputs_embeds)}"
                )
            tokens = inputs_embeds
        elif not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            raise ValueError(f"input_ids must be a (batch, T) LongTensor, got {_describe(input_ids)}")
        else:
            tokens = input_ids
        if tokens.shape[1] == 0:
            raise ValueError("the inputs must hold at least one token")
        return tokens

    def _check_memory(self, memory: Any, batch_size: int) -> None:
        """The state was made by this model (fingerprint) and has its shapes: checked here, not in torch."""
        if not isinstance(memory, HFMemoryState):
            raise ValueError(f"memory must be an HFMemoryState or None, got {type(memory).__name__}")
        check_fingerprint(memory.fingerprint, self.memory_fingerprint(), "memory")
        if memory.batch_size != batch_size:
            raise ValueError(f"memory has batch size {memory.batch_size} but the inputs have {batch_size}")
        if len(memory.ltm) != len(self.ltm) or len(memory.kv) not in (0, len(self.decoder_layout.layers)):
            raise ValueError("memory was made for a model with other layers / memory layers")
        if memory.block_size != self.memory_config.block_size:
            raise ValueError(
                f"memory has block_size {memory.block_size} but the model uses {self.memory_config.block_size}"
            )
        b, s, e = batch_size, memory.slots.shape[-1], self.decoder_layout.hidden_size
        n, d = self.memory_config.ltm.num_basis, self.memory_config.ltm.num_bins
        expected = [("slots", memory.slots, (b, s)), ("num_tokens", memory.num_tokens, (b,))]
        for i, (state, pending) in enumerate(zip(memory.ltm, memory.pending, strict=True)):
            expected += [
                (f"ltm[{i}].coeffs (batch, N, e)", state.coeffs, (b, n, e)),
                (f"ltm[{i}].length", state.length, (b,)),
                (f"ltm[{i}].bin_mass (batch, D)", state.bin_mass, (b, d)),
                (f"pending[{i}] (batch, S, e)", pending, (b, s, e)),
            ]
        text = self.config.get_text_config(decoder=True)
        h_kv = getattr(text, "num_key_value_heads", None) or self.decoder_layout.num_heads
        d_head = getattr(text, "head_dim", None) or e // self.decoder_layout.num_heads
        for i, (k, v) in enumerate(memory.kv):
            expected += [
                (f"kv[{i}].keys", k, (b, h_kv, s, d_head)),
                (f"kv[{i}].values", v, (b, h_kv, s, d_head)),
            ]
        for name, tensor, shape in expected:
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"memory {name} has shape {tuple(tensor.shape)}, this model needs {shape}: "
                    "it was made by a model with other memory settings"
                )
            dtype = {"slots": torch.bool, "num_tokens": torch.long}.get(
                name, torch.long if name.endswith(".length") else None
            )
            if tensor.dtype != dtype if dtype is not None else not tensor.is_floating_point():
                raise ValueError(f"memory {name} has dtype {tensor.dtype}: not a state made by this model")

    def _check_checkpointing(self) -> None:
        """Gradient checkpointing with memory needs layers whose replay can repeat the memory read
        (transformers' GradientCheckpointingLayer) and non-reentrant checkpointing; else a ValueError."""
        if not (self.training and torch.is_grad_enabled()):
            return
        for layer in self.decoder_layout.layers:
            if not getattr(layer, "gradient_checkpointing", False):
                continue
            if not isinstance(layer, GradientCheckpointingLayer):
                raise ValueError(
                    f"gradient checkpointing with memory needs decoder layers that are transformers "
                    f"GradientCheckpointingLayers; {type(layer).__name__} is not, so the backward pass's "
                    "recomputation would skip the memory read: call model.gradient_checkpointing_disable()"
                )
            if getattr(layer._gradient_checkpointing_func, "keywords", {}).get("use_reentrant"):
                raise ValueError(
                    "gradient checkpointing with memory needs use_reentrant=False: reentrant checkpointing runs "
                    "the layer without gradients, which drops those of the memory's KL term; call "
                    "model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})"
                )

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        memory: HFMemoryState | None = None,
        labels: torch.LongTensor | None = None,
        attention_mask: Tensor | None = None,
        logits_to_keep: int = 0,
        shift_labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        cache: Any = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        inputs_embeds: Tensor | None = None,
        return_record: bool = False,
        **kwargs: Any,
    ) -> MemoryCausalLMOutput | tuple:
        """Process input_ids (batch, T), any T, after the text already in ``memory``.

        inputs_embeds: (batch, T, e) instead of input_ids (what the model's input embedding
        gives for ids, or any other vectors, e.g. soft prompts); not both.

        return_record: out.record says what the memory did (SegmentRecord per segment: each
        absorption's sample positions and vectors, each read's densities); same logits and memory.

        labels: (batch, T), shifted inside (as in transformers), -100 ignored; the loss covers
        the T - 1 predictions inside this call. shift_labels: (batch, T), already shifted
        (shift_labels[:, i] is the target of input_ids[:, i]); with it, a stream fed in pieces is
        scored on every token. logits_to_keep: 0 = logits for every token, k > 0 = the last k.
        attention_mask: (batch, T) for the new tokens (or longer, as generate() passes it: its
        last T columns are used); 0 marks padding, which is not part of the row's stream.
        The short-term KV cache is part of ``memory``: cache / past_key_values must be None.
        """
        tokens = self._check_inputs(input_ids, inputs_embeds)  # (batch, T) ids or (batch, T, e) embeddings
        if past_key_values is not None or cache is not None:
            raise ValueError(
                f"{type(self).__name__} with memory keeps its short-term KV cache inside `memory`; "
                "pass memory=, not a cache"
            )
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
        self._check_checkpointing()
        batch, total = tokens.shape[:2]
        valid = _new_token_mask(attention_mask, batch, total, tokens.device)
        if memory is None:
            memory = self.init_memory(batch, tokens.device)
        self._check_memory(memory, batch)
        for name, lab in (("labels", labels), ("shift_labels", shift_labels)):
            if lab is not None and (not isinstance(lab, Tensor) or tuple(lab.shape) != (batch, total)):
                raise ValueError(
                    f"{name} must be (batch, T) = {(batch, total)} like the inputs, got {_describe(lab)}"
                )
        if labels is not None and shift_labels is not None:
            raise ValueError("give labels or shift_labels, not both")
        if (labels is not None or shift_labels is not None) and logits_to_keep:
            raise ValueError("labels need the logits of every token: use logits_to_keep=0")

        need_kl = self.training or torch.is_grad_enabled()  # the KL regularizer is a training term
        logits, kl_sum, kl_count = [], 0.0, 0
        records: list[SegmentRecord] | None = [] if return_record else None
        start = 0
        while start < total:
            updates: tuple[UpdateRecord, ...] = ()
            if records is None:
                memory = self.absorb_blocks(memory)
            else:
                memory, updates = self.absorb_blocks(memory, return_record=True)
            room = memory.block_size - memory.block_lengths  # (batch,) >= 1 after absorbing
            n = min(total - start, int(room.min()))
            keep = 0 if not logits_to_keep else min(n, max(0, logits_to_keep - (total - start - n)))
            seg_valid = None if valid is None else valid[:, start : start + n]
            seg_logits, memory, seg_kl, seg_count, reads = self._segment(
                tokens[:, start : start + n],
                seg_valid,
                memory,
                (keep or 1) if logits_to_keep else 0,
                need_kl,
                record=records is not None,
            )
            if records is not None:
                layers = tuple(LTMRecord(list(updates[k : k + 1]), read) for k, read in enumerate(reads))
                records.append(SegmentRecord(start, n, layers))
            if keep or not logits_to_keep:
                logits.append(seg_logits)
            kl_sum, kl_count = kl_sum + seg_kl, kl_count + seg_count
            start += n
        logits = torch.cat(logits, dim=1) if len(logits) > 1 else logits[0]

        kl = None
        if need_kl:
            kl = torch.as_tensor(kl_sum, dtype=torch.float32, device=logits.device) / max(kl_count, 1)
        lm_loss = loss = None
        if labels is not None or shift_labels is not None:
            pred, target = (logits[:, :-1], labels[:, 1:]) if shift_labels is None else (logits, shift_labels)
            lm_loss = F.cross_entropy(
                pred.reshape(-1, logits.shape[-1]).float(),
                target.reshape(-1).to(logits.device),
                ignore_index=-100,
            )
            loss = lm_loss
            if self.training and self.memory_config.ltm.kl_weight > 0 and len(self.ltm):
                loss = lm_loss + self.memory_config.ltm.kl_weight * kl
        out = MemoryCausalLMOutput(
            loss=loss, logits=logits, memory=memory, cache=memory, lm_loss=lm_loss, kl=kl, record=records
        )
        return out if return_dict is not False else out.to_tuple()

    def _segment(
        self,
        tokens: Tensor,
        valid: Tensor | None,
        memory: HFMemoryState,
        logits_to_keep: int,
        need_kl: bool,
        record: bool = False,
    ) -> tuple[Tensor, HFMemoryState, Tensor | float, int, list[ReadRecord | None]]:
        """Run n tokens (ids (batch, n) or embeddings (batch, n, e)) that fit in every row's current
        block: (logits, memory, KL sum, KL count, per memory layer the ReadRecord of its read if
        ``record``, else None)."""
        b, n = tokens.shape[:2]
        lengths = memory.block_lengths  # (batch,) tokens already in each row's block
        if valid is None:
            positions = lengths[:, None] + torch.arange(n, device=tokens.device)  # (batch, n)
        else:
            positions = (lengths[:, None] + valid.long().cumsum(1) - 1).clamp_min(0)
        new_slots = valid if valid is not None else torch.ones(b, n, dtype=torch.bool, device=tokens.device)
        slots = torch.cat([memory.slots, new_slots], dim=1)  # (batch, S + n)
        mask = None if bool(slots.all()) else slots.long()
        cache = _block_cache(memory.kv, len(self.decoder_layout.layers))

        read = _BlockRead(self, memory, valid, need_kl, record, cache, slots)
        layout = self.decoder_layout
        handles = read.register(layout, self.memory_config.layer_ids(len(layout.layers)))
        if any(map(_checkpointing, layout.layers)):
            # the block's cache is replay-safe (_BlockLayer), so checkpointed layers keep it; a flag of the
            # model itself (GPT-2's) would only drop the cache, as checkpointing happens in the layers
            handles += [_SetAttributes(layer, _can_checkpoint_with_cache=True) for layer in layout.layers]
            handles += [
                _SetAttributes(m, gradient_checkpointing=False)
                for m in self.modules()
                if getattr(m, "gradient_checkpointing", False)
                and not isinstance(m, GradientCheckpointingLayer)
            ]
        try:
            out = super().forward(  # the base model's own forward (this class is mixed in front of it)
                **({"inputs_embeds": tokens} if tokens.is_floating_point() else {"input_ids": tokens}),
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        finally:
            read.closed = True  # a later call of its hooks is a checkpoint's replay: no new effects
            for handle in reversed(handles):
                handle.remove()
        kv = tuple((layer.keys, layer.values) for layer in cache.layers)
        pending = tuple(torch.cat([p, h], dim=1) for p, h in zip(memory.pending, read.inputs, strict=True))
        if mask is not None:  # padding slots hold zeros (never NaN from a fully masked query)
            kv = tuple((_zero_unused(k, slots, 2), _zero_unused(v, slots, 2)) for k, v in kv)
            pending = tuple(_zero_unused(p, slots, 1) for p in pending)
        new = HFMemoryState(
            ltm=tuple(read.states),
            pending=pending,
            kv=kv,
            slots=slots,
            num_tokens=memory.num_tokens + new_slots.sum(1),
            block_size=memory.block_size,
            # keep the projections for the next tokens of this block only at inference:
            # with gradients on, the weights may change before the next call
            ltm_cache=tuple(read.projections) if not torch.is_grad_enabled() else None,
            fingerprint=memory.fingerprint,
        ).compact()
        return out.logits, new, read.kl_sum, read.kl_count, read.records

    # ------------------------------------------------------------------ generate

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the short-term KV cache lives in the memory

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: HFMemoryState | None = None,
        attention_mask: Tensor | None = None,
        memory: HFMemoryState | None = None,
        is_first_iteration: bool | None = False,
        inputs_embeds: Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Prefill: the whole prompt (new text after ``memory``; its embeddings if given); then
        the newest token(s).

        generate() carries the state from step to step under the name ``cache``."""
        state = cache if cache is not None else memory
        if cache is None and inputs_embeds is not None:
            inputs = {"inputs_embeds": inputs_embeds}
        else:
            ids = input_ids if cache is None else input_ids[:, -(next_sequence_length or 1) :]
            inputs = {"input_ids": ids.contiguous()}
        length = next(iter(inputs.values())).shape[1]
        mask = None if attention_mask is None else attention_mask[:, -length:]
        return {**inputs, "memory": state, "logits_to_keep": 1, "attention_mask": mask}

    def _reorder_cache(self, cache: HFMemoryState, beam_idx: Tensor) -> HFMemoryState:
        """Beam search: the memory rows follow their beams."""
        return cache.select(beam_idx)

    def _expand_inputs_for_generation(self, expand_size: int = 1, *args: Any, **model_kwargs: Any):
        memory = model_kwargs.pop("memory", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, *args, **model_kwargs)
        if memory is not None and expand_size > 1:
            rows = torch.arange(memory.batch_size, device=memory.slots.device).repeat_interleave(expand_size)
            memory = memory.select(rows)
        model_kwargs["memory"] = memory
        return input_ids, model_kwargs

    @torch.no_grad()
    def generate(self, inputs: Tensor | None = None, memory: HFMemoryState | None = None, **kwargs: Any):
        """GenerationMixin.generate, continuing after the text in ``memory``.

        ``inputs`` is the new prompt (tokens not yet in the memory, at least one per row),
        optionally left-padded with an ``attention_mask``; or give ``inputs_embeds`` (batch, T, e)
        (then the returned sequences hold the new tokens only, as in transformers). Greedy, sampling and beam search
        work; beams carry their own memory rows. With return_dict_in_generate=True the output
        also has ``.memory``: the state after the prompt and all generated tokens but the last
        (which was not fed back); under beam search, that of the running beams.
        """
        if kwargs.get("use_cache") is False:
            raise ValueError("use_cache=False is not supported: the memory is the cache")
        for name in ("cache", "past_key_values"):
            if kwargs.get(name) is not None:
                raise ValueError(f"pass memory=, not {name}=: the short-term KV cache lives in the memory")
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        if prompt is None:
            prompt = kwargs.get("inputs_embeds")
        if prompt is None:
            raise ValueError("generate needs a prompt of at least one new token (inputs)")
        if memory is not None:
            self._check_memory(memory, prompt.shape[0])
        if isinstance(prompt, Tensor) and kwargs.get("attention_mask") is None:
            # streams are unpadded unless a mask says so: don't guess padding from pad_token_id
            kwargs["attention_mask"] = torch.ones(prompt.shape[:2], dtype=torch.long, device=prompt.device)
        out = super().generate(inputs, memory=memory, **kwargs)
        if isinstance(out, ModelOutput):
            out["memory"] = out.get("cache")
        return out


class _BlockRead:
    """The hooks of one segment's forward: per memory layer, keep the layer input (to absorb
    later) and add the memory read to the self-attention output. Lives for one call only.

    A layer under gradient checkpointing gets its read hook inside the checkpointed function,
    so the backward pass's recomputation repeats the read (same z, same graph); once the
    forward is over (``closed``) a read changes nothing: the sticky mass, KL and layer input
    are those of the forward, recorded once per layer.
    """

    def __init__(
        self,
        model: MemoryCausalLM,
        memory: HFMemoryState,
        valid: Tensor | None,
        need_kl: bool,
        record: bool,
        cache: DynamicCache | None = None,
        slots: Tensor | None = None,
    ) -> None:
        """cache, slots (batch, S + n): the block's KV cache and its used slots, which a training-free
        memory with combine="softmax" attends to again (to get the block's softmax normaliser)."""
        self.model, self.memory, self.valid, self.need_kl, self.record = model, memory, valid, need_kl, record
        self.cache, self.slots = cache, slots
        k = len(memory.ltm)
        self.records: list[ReadRecord | None] = [None] * k  # with record: what each layer's read did
        self.inputs: list[Tensor | None] = [None] * k
        self.states: list[LTMState | None] = list(memory.ltm)
        self.projections: list[MemoryProjections | None] = [None] * k
        self.kl_sum: Tensor | float = 0.0
        self.kl_count = 0
        self.closed = False

    def register(self, layout: DecoderLayout, layer_ids: list[int]) -> list:
        handles = []
        for k, i in enumerate(layer_ids):
            layer, attention = layout.layers[i], layout.attentions[i]
            handles.append(layer.register_forward_pre_hook(self._keep_input(k), with_kwargs=True))
            if _checkpointing(layer):  # the layer's forward runs inside its checkpoint function
                checkpoint = partial(self._checkpoint, k, i, attention, layer._gradient_checkpointing_func)
                handles.append(_SetAttributes(layer, _gradient_checkpointing_func=checkpoint))
            else:
                handles.append(attention.register_forward_hook(self._add_read(k, i), with_kwargs=True))
        return handles

    def _checkpoint(
        self, k: int, i: int, attention: nn.Module, checkpoint: Callable, function: Callable, *args
    ):
        """The layer's checkpoint function, with the read hook inside what it recomputes."""

        def with_read(*inputs):
            handle = attention.register_forward_hook(self._add_read(k, i), with_kwargs=True)
            try:
                return function(*inputs)
            finally:
                handle.remove()

        return checkpoint(with_read, *args)

    def _keep_input(self, k: int):
        def hook(module, args, kwargs):
            self.inputs[k] = args[0] if args else kwargs["hidden_states"]  # the residual stream (batch, n, e)

        return hook

    def _add_read(self, k: int, i: int):
        """The forward hook of memory layer k (decoder layer i)'s attention: adds the memory's read."""
        free = isinstance(self.model.ltm[k], TrainingFreeMemory)

        def hook(module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]  # normalised hidden states: the queries
            first = output[0] if isinstance(output, tuple) else output
            block = None
            if free:
                if not self.closed:
                    self.inputs[k] = x  # a training-free memory holds what the attention's keys come from
                block = self._block_attention(i, first, kwargs.get("position_embeddings"))
            z = self._read(k, x, block)
            if isinstance(output, tuple):
                return (first + z.to(first.dtype), *output[1:])
            return first + z.to(first.dtype)

        return hook

    def _block_attention(
        self, i: int, output: Tensor, rotary: tuple[Tensor, Tensor] | None
    ) -> BlockAttention:
        """What decoder layer i's attention did in this segment, for a training-free memory: its output
        and (combine="softmax") the keys/values in its cache, which each query saw, the queries' rotary."""
        if self.model.training_free.combine != "softmax":
            return BlockAttention(output)
        layer = self.cache.layers[i]  # updated by the attention: the block's keys so far, then this segment's
        n, total = output.shape[1], self.slots.shape[1]
        key = torch.arange(total, device=output.device)
        causal = key[None, :] <= (total - n) + torch.arange(n, device=output.device)[:, None]  # (n, S + n)
        key_mask = causal[None] & self.slots[:, None, :]  # (batch, n, S + n)
        return BlockAttention(output, layer.keys, layer.values, key_mask, rotary)

    def _read(self, k: int, x: Tensor, block: BlockAttention | None = None) -> Tensor:
        """Memory layer k's read for queries x; block: the attention's own (training-free memories)."""
        ltm, state, memory = self.model.ltm[k], self.memory.ltm[k], self.memory
        proj = None
        if memory.ltm_cache is not None and not torch.is_grad_enabled():
            proj = memory.ltm_cache[k]  # (with gradients on, always recompute: they must reach W_V, W_K, W_Q)
        if proj is None:
            proj = ltm.projections(state, x.dtype)
        z, new_state, kl, *read = ltm.read(
            x,
            state,
            proj,
            **({} if block is None else {"block": block}),
            query_mask=self.valid,
            return_kl=self.need_kl,
            accumulate_mass=True,
            return_record=self.record,
        )
        if self.closed:  # a checkpoint's recomputation: same z, no second effect
            return z
        self.projections[k], self.states[k] = proj, new_state
        if self.record:
            self.records[k] = read[0]
        if kl is not None:
            self.kl_sum = self.kl_sum + kl.sum()
            valid_queries = (state.length > 0)[:, None] & (
                self.valid if self.valid is not None else torch.ones_like(x[..., 0], dtype=torch.bool)
            )
            self.kl_count += int(valid_queries.sum()) * kl.shape[1]
        return z


def _checkpointing(layer: nn.Module) -> bool:
    """Whether transformers will checkpoint this decoder layer's forward in this call."""
    return bool(
        getattr(layer, "gradient_checkpointing", False) and layer.training and torch.is_grad_enabled()
    )


class _SetAttributes:
    """Set a module's attributes for one call; remove() restores them (like a hook handle)."""

    def __init__(self, module: nn.Module, **values: Any) -> None:
        self.module, self.former = module, {name: module.__dict__.get(name, _UNSET) for name in values}
        for name, value in values.items():
            setattr(module, name, value)

    def remove(self) -> None:
        for name, value in self.former.items():
            if value is _UNSET:
                delattr(self.module, name)
            else:
                setattr(self.module, name, value)


_UNSET = object()


class _BlockLayer(DynamicLayer):
    """A cache layer holding the block's keys/values so far (batch, H_kv, S, d), never changed:
    update returns them with the new ones appended, as a new tensor. Calling update again with
    the same new keys (a checkpointed layer's recomputation) returns the same result, not the
    new keys twice."""

    def __init__(self, keys: Tensor | None = None, values: Tensor | None = None) -> None:
        super().__init__()
        self.prefix = None if keys is None else (keys, values)
        if keys is not None:
            self.lazy_initialization(keys, values)
            self.keys, self.values = keys, values

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.prefix is None:
            self.keys, self.values = key_states, value_states
        else:
            self.keys = torch.cat([self.prefix[0], key_states], dim=-2)
            self.values = torch.cat([self.prefix[1], value_states], dim=-2)
        return self.keys, self.values


def _block_cache(kv: tuple, num_layers: int) -> DynamicCache:
    """A DynamicCache of _BlockLayers holding the block's keys/values without copying them (the
    state's tensors are never changed)."""
    cache = DynamicCache()
    cache.layers = [_BlockLayer(keys, values) for keys, values in kv] or [
        _BlockLayer() for _ in range(num_layers)
    ]
    return cache


def _where_rows(rows: Tensor, new: LTMState, old: LTMState) -> LTMState:
    """new where rows (batch,) is True, else old."""
    return LTMState(
        coeffs=torch.where(rows[:, None, None], new.coeffs, old.coeffs),
        length=torch.where(rows, new.length, old.length),
        bin_mass=torch.where(rows[:, None], new.bin_mass, old.bin_mass),
    )


def _zero_unused(x: Tensor, slots: Tensor, dim: int) -> Tensor:
    """x with zeros in the slots (along dim) that are not used: slots (batch, S)."""
    shape = [slots.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = slots.shape[1]
    return torch.where(slots.view(shape), x, x.new_zeros(()))


def _new_token_mask(attention_mask: Tensor | None, batch: int, total: int, device) -> Tensor | None:
    """(batch, T) bool mask of the real new tokens, or None when all are real."""
    if attention_mask is None:
        return None
    if (
        not isinstance(attention_mask, Tensor)
        or attention_mask.dim() != 2
        or attention_mask.shape[0] != batch
    ):
        raise ValueError(f"attention_mask must be a (batch, >= T) tensor, got {_describe(attention_mask)}")
    if attention_mask.shape[1] < total:
        raise ValueError(f"attention_mask covers {attention_mask.shape[1]} tokens but input_ids has {total}")
    valid = attention_mask[:, -total:].to(device).bool()
    return None if bool(valid.all()) else valid


def _describe(x: Any) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


# --------------------------------------------------------------------------- add_memory

_MEMORY_CLASSES: dict[type, type] = {}


def memory_class(base: type) -> type:
    """``base`` with MemoryCausalLM in front: same name, so a saved folder still names the base."""
    if issubclass(base, MemoryCausalLM):
        return base
    if base not in _MEMORY_CLASSES:
        cls = type(base.__name__, (MemoryCausalLM, base), {"__module__": __name__, "__doc__": base.__doc__})
        cls.__qualname__ = base.__qualname__
        _MEMORY_CLASSES[base] = cls
    return _MEMORY_CLASSES[base]


def add_memory(
    model: nn.Module, training_free: bool | dict | TrainingFreeConfig = False, **memory_config: Any
) -> nn.Module:
    """Give a transformers causal LM an unbounded ∞-former memory in each decoder layer; returns it.

    memory_config: block_size, memory_layers, and the memory's settings flat (any LTMConfig
    setting: num_basis, num_samples, tau, widths, ...) or as ``ltm`` (``MemoryConfig.from_keywords``);
    unknown keywords raise a ValueError naming them. A model whose layout is not
    supported raises a ValueError naming its class. The model is changed in place (its class
    becomes a subclass of its own with this module's forward/generate, and ``model.ltm`` holds
    the new weights, on the model's device and dtype) and returned. The memory settings are
    written to ``model.config.infinite_memory``, so ``save_pretrained`` keeps them.

    training_free: True (or {"density": "gibbs" | "gaussian", "alpha": α}) adds no weights: each
    memory layer reads the memory through the layer's own attention projections (training_free.py).
    """
    if isinstance(model, MemoryCausalLM):
        raise ValueError(f"{type(model).__name__} already has a memory")
    config, free = MemoryConfig.from_keywords(**memory_config), TrainingFreeConfig.of(training_free)
    config, ltm = build_memory(model, config, free)  # every check, before the model is changed
    install_memory(model, config, ltm, free)
    return model


def memory_settings_of(
    settings: Any, source: str = "the memory settings"
) -> tuple[MemoryConfig, TrainingFreeConfig | None]:
    """Saved memory settings (config.infinite_memory, memory_config.json: ``memory_settings``, or
    0.2's flat form) as (MemoryConfig, TrainingFreeConfig or None); ValueError naming ``source``
    for unknown, missing or bad fields."""
    if not isinstance(settings, dict):
        raise ValueError(f"{source} must be a JSON object, got {type(settings).__name__}")
    settings = dict(settings)
    free = TrainingFreeConfig.of(settings.pop("training_free", None))
    return MemoryConfig.from_dict(settings, source), free


def build_memory(
    model: nn.Module, config: MemoryConfig, training_free: TrainingFreeConfig | None = None
) -> tuple[MemoryConfig, nn.ModuleList]:
    """The resolved settings and new memory modules for ``model`` (on its device and dtype),
    checked against its layout, positions and layers (and, training_free, its attention's
    projections); ``model`` itself is not changed."""
    layout = model.decoder_layout if isinstance(model, MemoryCausalLM) else find_layout(model)
    config, ltm = _new_memory(model, layout, config, training_free)
    param = next(model.parameters(), None)
    if param is not None:
        ltm.to(device=param.device, dtype=param.dtype if param.is_floating_point() else None)
    return config, ltm


def _new_memory(
    model: nn.Module, layout: DecoderLayout, config: MemoryConfig, training_free: TrainingFreeConfig | None
) -> tuple[MemoryConfig, nn.ModuleList]:
    """(resolved config, one new LongTermAttention or TrainingFreeMemory per memory layer)."""
    config = config.resolved(len(layout.layers), layout.max_positions)
    ltm_config = config.ltm_config(layout.hidden_size, layout.num_heads)
    layer_ids = config.layer_ids(len(layout.layers))
    if training_free is None:
        return config, nn.ModuleList(LongTermAttention(ltm_config) for _ in layer_ids)
    text_config = model.config.get_text_config(decoder=True)
    # raises for an attention without projections to read with (TrainingFreeMemory's Projections)
    return config, nn.ModuleList(
        TrainingFreeMemory(ltm_config, training_free, layout.attentions[i], text_config, type(model).__name__)
        for i in layer_ids
    )


def install_memory(
    model: nn.Module,
    config: MemoryConfig,
    ltm: nn.ModuleList,
    training_free: TrainingFreeConfig | None = None,
) -> None:
    """Give ``model`` the memory made by build_memory (after every check has passed): its class
    becomes the memory class, ``model.ltm`` / ``model.memory_config`` / ``model.training_free`` /
    ``config.infinite_memory`` are set (replacing a memory it had)."""
    model.__class__ = memory_class(type(model))
    model.memory_config = config
    model.ltm = ltm
    model.training_free = training_free
    model.config.infinite_memory = model.memory_settings


__all__ = [
    "MemoryCausalLM",
    "MemoryCausalLMOutput",
    "SegmentRecord",
    "add_memory",
    "build_memory",
    "install_memory",
    "memory_class",
    "memory_settings_of",
]
