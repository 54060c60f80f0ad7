"""The Compressive Transformer baseline (Rae et al. 2020) against an explicit reference.

The reference is written out here, row by row and head by head, from the model's weights: each
layer attends over [compressed memory; memory; segment] (the valid entries of each row, in that
order) with Transformer-XL relative positions, and the vectors leaving the memory are compressed by
the Conv1d (kernel = stride = c) into new slots appended to the compressed memory. It uses only the
model's forward, its state (mems, cmems and their per-row valid counts) and its weights.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from infinite_former.models import InfiniteFormerLM, ModelConfig

V, E, H, T = 11, 16, 2, 3  # vocabulary, width, heads, segment length
MEM, CMEM, RATE = 4, 3, 2


def make_model() -> InfiniteFormerLM:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=V,
        d_model=E,
        n_layers=2,
        n_heads=H,
        d_inner=32,
        dropout=0.0,
        memory_type="compressive",
        mem_len=MEM,
        cmem_len=CMEM,
        compression_rate=RATE,
    )
    model = InfiniteFormerLM(cfg).double().eval()
    with torch.no_grad():  # u, v start at 0: give the position terms something to do
        for p in model.parameters():
            if p.dim() == 2 and p.shape == (H, E // H):
                p.normal_(0.0, 0.5)
    return model


def rel_attention(blk: nn.Module, x: torch.Tensor, n_query: int) -> torch.Tensor:
    """One row's multi-head attention: x (S, e) normalised [cmem; mem; segment], the last n_query
    are the queries. score(i, j) = [(q_i + u)ᵀk_j + (q_i + v)ᵀ W_R R(p_i - p_j)] / √d for
    p_j <= p_i, R(δ) = [sin(δ ω), cos(δ ω)], ω_k = 10000^(-2k/e)."""
    attn = blk.attn
    S, e = x.shape
    d = e // H
    w_q, w_k, w_v = attn.qkv.weight.split(e)
    q, k, v = x[S - n_query :] @ w_q.T, x @ w_k.T, x @ w_v.T
    omega = 1.0 / 10000 ** (torch.arange(0, e, 2, dtype=torch.float64) / e)
    heads = []
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        scores = torch.full((n_query, S), float("-inf"), dtype=torch.float64)
        for i in range(n_query):
            p_i = S - n_query + i
            for j in range(p_i + 1):
                angles = (p_i - j) * omega
                r = attn.r_net(torch.cat([angles.sin(), angles.cos()]).to(x.dtype))[sl]  # W_R R(δ), head h
                content = (q[i, sl] + attn.u[h]) @ k[j, sl]
                position = (q[i, sl] + attn.v[h]) @ r
                scores[i, j] = (content + position) / math.sqrt(d)
        heads.append(scores.softmax(-1) @ v[:, sl])  # (n_query, d)
    return attn.out(torch.cat(heads, dim=-1))


def compressor_conv(blk: nn.Module) -> nn.Conv1d:
    (conv,) = [m for m in blk.modules() if isinstance(m, nn.Conv1d)]
    return conv


def reference(model: InfiniteFormerLM, tokens: torch.Tensor, state) -> tuple[torch.Tensor, list, list]:
    """Logits (b, T, V), and per layer per row: the new valid compressed slots and the new mems."""
    b = tokens.shape[0]
    h = model.embed(tokens)  # layer 0's inputs (b, T, e)
    new_cmems, new_mems = [], []
    for layer, blk in enumerate(model.layers):
        z_rows, cmem_rows, mem_rows = [], [], []
        for i in range(b):
            nc, nm = int(state.cmem_valid[i]), int(state.mem_valid[i])
            cmem = state.cmems[layer][i, state.cmems[layer].shape[1] - nc :]  # oldest first
            mem = state.mems[layer][i, state.mems[layer].shape[1] - nm :]
            z_rows.append(rel_attention(blk, blk.ln1(torch.cat([cmem, mem, h[i]])), T))
            # whole groups of c leave the memory, the rest (mem_len .. mem_len + c - 1) stays
            block = torch.cat([mem, h[i]])  # layer inputs [mem; segment]
            evict = max(nm + T - MEM, 0) // RATE * RATE
            conv = compressor_conv(blk)
            slots = [
                F.conv1d(block[g : g + RATE].T[None], conv.weight, conv.bias)[0, :, 0]  # one slot per group
                for g in range(0, evict, RATE)
            ]
            cmem_rows.append(torch.cat([cmem, *[s[None] for s in slots]])[-CMEM:])
            mem_rows.append(block[evict:])
        new_cmems.append(cmem_rows)
        new_mems.append(mem_rows)
        h = h + torch.stack(z_rows)
        h = h + blk.ff(blk.ln2(h))
    return model.head(model.ln_f(h)), new_cmems, new_mems


def valid(t: torch.Tensor, count: torch.Tensor, row: int) -> torch.Tensor:
    return t[row, t.shape[1] - int(count[row]) :]


def test_logits_equal_attention_over_cmem_mem_segment_at_every_fill_level():
    model = make_model()
    tokens = torch.randint(0, V, (2, 8 * T), generator=torch.Generator().manual_seed(1))
    state = model.init_state(2)
    fills = set()
    with torch.no_grad():
        for k in range(8):
            if k == 4:  # row 0 starts a new document: its rows hold fewer slots than row 1's from here
                state = state.reset(torch.tensor([True, False]))
            seg = tokens[:, k * T : (k + 1) * T]
            out, new = model(seg, state)
            ref, ref_cmems, ref_mems = reference(model, seg, state)
            torch.testing.assert_close(out.logits, ref, rtol=1e-9, atol=1e-10)
            for layer in range(2):
                for i in range(2):
                    torch.testing.assert_close(
                        valid(new.cmems[layer], new.cmem_valid, i), ref_cmems[layer][i]
                    )
                    torch.testing.assert_close(valid(new.mems[layer], new.mem_valid, i), ref_mems[layer][i])
            fills.update((int(state.cmem_valid[i]), state.cmems[0].shape[1]) for i in range(2))
            state = new
    # empty, partly filled (also narrower than the batch's width) and full compressed memories
    assert {n for n, _ in fills} == set(range(CMEM + 1))
    assert any(n < width for n, width in fills if n > 0)


def perturbed(state, layer: int, row: int, slot: int):
    cmems = [t.clone() for t in state.cmems]
    # a direction, not a constant shift (LN₁ would remove that)
    cmems[layer][row, slot] += 3.0 * torch.randn(
        E, generator=torch.Generator().manual_seed(slot), dtype=torch.float64
    )
    return dataclasses.replace(state, memory=dataclasses.replace(state.memory, cmems=cmems))


def test_oldest_slot_is_read_and_slots_beyond_a_rows_count_are_not():
    model = make_model()
    tokens = torch.randint(0, V, (2, 7 * T), generator=torch.Generator().manual_seed(2))
    state = model.init_state(2)
    with torch.no_grad():
        for k in range(6):
            if k == 4:
                state = state.reset(torch.tensor([True, False]))
            state = model(tokens[:, k * T : (k + 1) * T], state)[1]
        width = state.cmems[0].shape[1]
        assert state.cmem_valid.tolist() == [1, CMEM] and width == CMEM  # row 0: one slot of three
        seg = tokens[:, 6 * T :]
        base = model(seg, state)[0].logits
        for layer in range(2):
            for row in range(2):  # the oldest valid slot of each row, in each layer
                oldest = width - int(state.cmem_valid[row])
                out = model(seg, perturbed(state, layer, row, oldest))[0].logits
                assert (out[row] - base[row]).abs().max() > 1e-4, (layer, row)
                torch.testing.assert_close(out[1 - row], base[1 - row], rtol=0, atol=0)
            # row 0's slots before its one valid slot are padding: no effect at all
            for slot in range(width - 1):
                out = model(seg, perturbed(state, layer, 0, slot))[0].logits
                torch.testing.assert_close(out, base, rtol=0, atol=0)
