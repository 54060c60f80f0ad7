"""Gradient checkpointing on models with memory (hf/causal_lm.py): the same loss, gradients and
memory as without it, with the absorption and the memory's effects happening once per block per layer."""

from __future__ import annotations

import pytest
import torch

from test_hf_any import BLOCK, FAMILIES, ids, memory_model


class Counter:
    """Counts the calls of one LongTermAttention method (calling it unchanged)."""

    def __init__(self, model, name: str) -> None:
        self.calls = 0
        for ltm in model.ltm:
            original = getattr(ltm, name)

            def counted(*args, _original=original, **kwargs):
                self.calls += 1
                return _original(*args, **kwargs)

            setattr(ltm, name, counted)


def train_step(family: str, checkpointing: bool, **kwargs):
    """Two calls (3 blocks and 3 tokens, then 5 + 3 tokens): loss, grads, memory, counts."""
    model = memory_model(family).train()  # dropout on, sticky sampling on
    if checkpointing:
        model.gradient_checkpointing_enable(**kwargs)
    absorbs, reads = Counter(model, "update"), Counter(model, "read")
    x = ids(2, 3 * BLOCK + 3, seed=4)
    y = ids(2, BLOCK, seed=5)
    torch.manual_seed(0)
    first = model(x, labels=x)
    second = model(
        y, memory=first.memory, labels=y
    )  # continues the partial block: its keys come from the cache
    loss = first.loss + second.loss
    forward_reads = reads.calls
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss.detach(), grads, second.memory, absorbs.calls, forward_reads, reads.calls


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpointing_gives_the_same_loss_gradients_and_memory(family):
    loss, grads, memory, absorbs, reads, _ = train_step(family, checkpointing=False)
    c_loss, c_grads, c_memory, c_absorbs, c_reads, c_all_reads = train_step(family, checkpointing=True)
    layers = 2
    # 3 blocks absorbed in the first call, the 4th (3 + 5 tokens) when the second call's 6th token arrives
    assert absorbs == c_absorbs == 4 * layers
    # segments: 4 in the first call (3 blocks + 3 tokens), 2 in the second (5 + 3): one read per segment and layer
    assert reads == c_reads == 6 * layers
    assert c_all_reads == 2 * c_reads  # the backward pass recomputes each read once (no effects: see memory)
    torch.testing.assert_close(c_loss, loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == c_grads.keys()
    memory_grads = [n for n in grads if n.startswith("ltm.") and grads[n] is not None]
    assert any(float(grads[n].abs().sum()) > 0 for n in memory_grads if ".out." not in n)
    for name, g in grads.items():
        assert (g is None) == (c_grads[name] is None), name
        if g is not None:
            torch.testing.assert_close(c_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)
    for s, c in zip(memory.ltm, c_memory.ltm, strict=True):  # sticky bin mass counted once
        torch.testing.assert_close(c.bin_mass, s.bin_mass)
        torch.testing.assert_close(c.coeffs, s.coeffs)
    for (k, v), (ck, cv) in zip(memory.kv, c_memory.kv, strict=True):  # the block's cache, kept
        torch.testing.assert_close(ck, k)
        torch.testing.assert_close(cv, v)


def test_reentrant_checkpointing_is_refused_naming_the_reason():
    model = memory_model("llama").train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant=False"):
        model(ids(1, 4))
    with torch.no_grad():  # without gradients nothing is checkpointed
        model(ids(1, 4))


def test_a_layer_that_transformers_cannot_checkpoint_is_refused_naming_it():
    model = memory_model("llama").train()
    model.gradient_checkpointing_enable()
    layer = model.decoder_layout.layers[0]
    layer.__class__ = type("CustomDecoderLayer", (torch.nn.Module,), {"forward": type(layer).forward})
    with pytest.raises(ValueError, match="CustomDecoderLayer"):
        model(ids(1, 4))
