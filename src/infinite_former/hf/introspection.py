"""Memory introspection for a Hugging Face causal LM with memory (``add_memory``, GPT-2 + memory).

    report = inspect_hf_document(model, token_ids, InspectConfig(seed=0))  # blocks of L tokens
    write_report(report, "inspect/")  # the figures and inspect.json of infinite_former.introspection

    infinite-former lm inspect --hf FOLDER --text book.txt [--out DIR]    # experiments/introspect.py

The same three questions as :func:`infinite_former.introspection.inspect_document` (attention by
age, sticky samples, reconstruction by age), answered with its age map, report and figures. The
document is read by the model's own forward, one block of L = block_size tokens per call,
``model(ids[block], memory=memory, return_record=True)``, as a stream is read; the model absorbs
each finished block itself at the start of the next call, and says in ``out.record`` what it did
(causal_lm.SegmentRecord): per memory layer, the absorption's sample positions, τ and stored
vectors, and the μ, σ² of the block's queries. This module only reads that record.

The whole reading runs inside a fork of the global RNG seeded with ``InspectConfig.seed``, so
the caller's random state is untouched and the logits are those of the plain block-by-block loop
after ``torch.manual_seed(seed)`` (a test checks it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..introspection import (
    AgeMap,
    InspectConfig,
    LayerReport,
    MemoryReport,
    add_read,
    age_bin_edges,
    measure_reconstruction,
    record_absorption,
)
from ..utils import seeded_rng
from .causal_lm import MemoryCausalLM


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
    nll_sum, n_targets = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with seeded_rng(cfg.seed, device):
            memory = model.init_memory(1, device)
            for start in range(0, n, block):
                seg = ids[None, start : start + block]  # (1, T)
                out = model(seg, memory=memory, return_record=True)
                memory = out.memory
                tgt = ids[start + 1 : start + block + 1]
                nll_sum += float(F.cross_entropy(out.logits[0, : tgt.numel()].float(), tgt, reduction="sum"))
                n_targets += tgt.numel()
                for segment in out.record:
                    for k, (ltm, record) in enumerate(zip(ltms, segment.layers, strict=True)):
                        for update in record.updates:
                            maps[k] = record_absorption(layers[k], maps[k], update, stride, c.num_bins)
                        if record.read is None:
                            raise RuntimeError(f"the self-attention of layer {layer_ids[k]} was not called")
                        cdf = ltm.normalizer.cdf
                        add_read(layers[k], maps[k], cdf, record.read, start + segment.start, cells, edges)
        measure_reconstruction(ltms, memory.ltm, maps, layers, n)
    finally:
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


__all__ = ["inspect_hf_document"]
