"""Memory introspection for a Hugging Face causal LM with memory (``add_memory``, GPT-2 + memory).

    report = inspect_hf_document(model, token_ids, InspectConfig(seed=0))  # blocks of L tokens
    write_report(report, "inspect/")  # the figures and inspect.json of infinite_former.introspection

    infinite-former lm inspect --hf FOLDER --text book.txt [--out DIR]    # experiments/introspect.py

The same three questions as :func:`infinite_former.introspection.inspect_document` (attention by
age, sticky samples, reconstruction by age), answered with its age map, report and figures. The
document is read by the model's own forward, one block of L = block_size tokens per call,
``model(ids[block], memory=memory)``, as a stream is read; the model absorbs each finished block
itself at the start of the next call. This module only observes:

* the queries of each memory layer: a forward pre-hook on the layer's self-attention keeps its
  input (the normalised hidden states, which causal_lm.py reads the memory with); their μ, σ²
  are ``ltm.densities`` on the memory state the block read. For sticky memories they are checked
  against the bin mass the model itself recorded for the block;
* each finished block before it is absorbed: its vectors as the model kept them
  (``memory.pending``, the layer inputs) and the M positions at which the absorption samples the
  old signal. Sticky sampling draws them from the global RNG; they are drawn here first from a
  fork of it (the same numbers the absorption then draws).

The whole reading runs inside a fork of the global RNG seeded with ``InspectConfig.seed``, so
the caller's random state is untouched and the logits are those of the plain block-by-block loop
after ``torch.manual_seed(seed)`` (a test checks it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..introspection import (
    AgeMap,
    InspectConfig,
    LayerReport,
    MemoryReport,
    add_attention,
    age_bin_edges,
    measure_reconstruction,
    record_absorption,
    sample_positions,
)
from ..memory import bin_mass
from .causal_lm import MemoryCausalLM
from .memory import HFMemoryState


@torch.no_grad()
def inspect_hf_document(
    model: nn.Module,
    token_ids: Tensor | list[int],
    config: InspectConfig | None = None,
    device: torch.device | str | None = None,
) -> MemoryReport:
    """Read one document through a causal LM with memory, block by block, and record its memory.

    model: a model with memory (``add_memory``, ``hf.load_model``, InfiniteGPT2LMHeadModel);
    token_ids: (n,) the document, read in blocks of the model's L = block_size. Batch 1, eval
    mode (restored after). Returns the MemoryReport (one layer entry per memory layer).
    """
    cfg = config or InspectConfig()
    if not isinstance(model, MemoryCausalLM):
        raise ValueError(
            f"model: a {type(model).__name__} has no memory to inspect "
            "(give it one with hf.add_memory, or load a folder saved with one with hf.load_model)"
        )
    if not len(model.ltm):
        raise ValueError("model: it has no memory layers (memory_layers is empty)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten().to(device)
    n = ids.numel()
    if n < 2:
        raise ValueError(f"token_ids: need at least 2 tokens, got {n}")
    ltms = list(model.ltm)
    c = ltms[0].config
    block = model.memory_config.block_size
    edges = age_bin_edges(n + 1)
    stride = max(1, math.ceil(n / cfg.max_tracked))
    layers = [
        LayerReport(attention_mass=np.zeros((c.n_heads, len(edges) - 1)), outside_mass=np.zeros(c.n_heads))
        for _ in ltms
    ]
    maps = [AgeMap.empty(cfg.grid_points) for _ in ltms]
    cells = torch.linspace(0, 1, cfg.grid_points + 1, device=device, dtype=torch.float64)
    layer_ids = model.memory_config.layer_ids(len(model.decoder_layout.layers))
    queries: list[Tensor | None] = [None] * len(ltms)
    handles = _keep_queries(model, layer_ids, queries)
    nll_sum, n_targets = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with _seeded_rng(cfg.seed, device):
            memory = model.init_memory(1, device)
            for start in range(0, n, block):
                if int(memory.block_lengths[0]) == block:  # the model absorbs it at the start of this call
                    maps = _record_absorption(ltms, memory, maps, layers, stride)
                queries[:] = [None] * len(ltms)
                seg = ids[None, start : start + block]  # (1, T)
                out = model(seg, memory=memory)
                memory = out.memory
                tgt = ids[start + 1 : start + block + 1]
                nll_sum += float(F.cross_entropy(out.logits[0, : tgt.numel()].float(), tgt, reduction="sum"))
                n_targets += tgt.numel()
                for k, ltm in enumerate(ltms):
                    state = memory.ltm[k]
                    if int(state.length[0]) == 0:
                        continue
                    if queries[k] is None:
                        raise RuntimeError(f"the self-attention of layer {layer_ids[k]} was not called")
                    mu, sigma2, _ = ltm.densities(queries[k], state)  # (1, H, T)
                    _check_densities(ltm, state, mu, sigma2, layer_ids[k])
                    cdf = ltm.normalizer.cdf
                    add_attention(
                        layers[k], maps[k], cdf, mu[0].double(), sigma2[0].double(), start, cells, edges
                    )
        measure_reconstruction(ltms, memory.ltm, maps, layers, n)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return MemoryReport(
        tokens=n,
        seg_len=block,
        memory_type="infinite_sticky" if c.sticky else "infinite",
        num_basis=c.num_basis,
        num_samples=c.samples,
        tau=c.tau,
        num_bins=c.num_bins,
        mem_len=block,  # the short-term block: a query sees 1 .. L tokens of it
        age_edges=edges,
        layers=layers,
        layer_ids=layer_ids,
        meta={
            "model_class": type(model).__name__,
            "model_type": getattr(model.config, "model_type", None),
            "block_size": block,
            "nll_per_token": nll_sum / n_targets,
            "grid_points": cfg.grid_points,
            "tracked_every": stride,
            "seed": cfg.seed,
        },
    )


def _keep_queries(model: MemoryCausalLM, layer_ids: list[int], queries: list[Tensor | None]) -> list:
    """Forward pre-hooks on the memory layers' self-attentions that keep their input (batch, T, e):
    the queries of the memory read (causal_lm._BlockRead._add_read). They change nothing."""
    attentions = model.decoder_layout.attentions

    def keep(k: int):
        def hook(module, args, kwargs):
            queries[k] = args[0] if args else kwargs["hidden_states"]

        return hook

    return [
        attentions[i].register_forward_pre_hook(keep(k), with_kwargs=True) for k, i in enumerate(layer_ids)
    ]


def _record_absorption(
    ltms: list, memory: HFMemoryState, maps: list[AgeMap], layers: list[LayerReport], stride: int
) -> list[AgeMap]:
    """Record the absorption of the full block in ``memory``, which the model's next call does
    (MemoryCausalLM.absorb_blocks: one ``ltm.update`` per memory layer, in order)."""
    # the sample positions, drawn from a fork of the global RNG in the order the layers draw them
    with torch.random.fork_rng(devices=_cuda_devices(memory.slots.device)):
        samples = [sample_positions(ltm, state) for ltm, state in zip(ltms, memory.ltm, strict=True)]
    out = []
    for k, (ltm, state, pending) in enumerate(zip(ltms, memory.ltm, memory.pending, strict=True)):
        x = pending[:, memory.slots[0]]  # (1, L, e): the block's layer inputs, in order
        out.append(record_absorption(layers[k], maps[k], ltm, state, x, samples[k], stride))
    return out


def _check_densities(ltm, state, mu: Tensor, sigma2: Tensor, layer: int) -> None:
    """Sticky memories: the bin mass of μ, σ² must be the one the model recorded while reading the
    block (its state's mass starts at zero after each absorption), else these were not its queries."""
    c = ltm.config
    if not c.sticky:
        return
    mass = bin_mass(ltm.normalizer.cdf, mu, sigma2, c.num_bins).to(state.bin_mass.dtype)
    if not torch.allclose(mass, state.bin_mass, rtol=1e-4, atol=1e-6 * float(mass.sum())):
        raise RuntimeError(
            f"layer {layer}: the densities of the kept queries do not give the bin mass the model "
            "recorded; the memory read's queries are no longer the self-attention's input"
        )


def _cuda_devices(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


@contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """The global RNG (CPU, and ``device``'s if CUDA) seeded with ``seed``, restored afterwards."""
    with torch.random.fork_rng(devices=_cuda_devices(device)):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


__all__ = ["inspect_hf_document"]
