"""Training-free memory (hf/training_free.py): add_memory(model, training_free=...) adds no weights and
reads the continuous memory through each layer's own attention projections."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from infinite_former.hf import add_memory, from_pretrained, load_memory, save_memory
from infinite_former.hf.lora import add_lora
from infinite_former.hf.training_free import BlockAttention, TrainingFreeConfig
from test_hf_any import BLOCK, MEMORY, base_model, family_config, ids, run
from test_transactional import assert_unchanged, snapshot

FREE = ["llama", "qwen2", "mistral", "gpt2"]


@pytest.mark.parametrize("family", FREE)
@pytest.mark.parametrize("density", ["gibbs", "gaussian"])
def test_adds_no_weights_starts_as_the_base_model_and_then_reads_the_memory(family, density):
    base = base_model(family)
    names = set(base.state_dict())
    model = add_memory(copy.deepcopy(base), training_free={"density": density, "alpha": 0.5}, **MEMORY).eval()
    assert set(model.state_dict()) == names and model.memory_parameters() == []
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())
    x = ids(2, 3 * BLOCK + 2)
    out = run(model, x)
    with torch.no_grad():
        ref = torch.cat([base(x[:, s : s + BLOCK]).logits for s in range(0, x.shape[1], BLOCK)], dim=1)
    torch.testing.assert_close(out.logits[:, :BLOCK], ref[:, :BLOCK], atol=1e-5, rtol=1e-5)  # empty memory
    assert (out.logits[:, BLOCK:] - ref[:, BLOCK:]).abs().amax(-1).min() > 1e-4  # every later token reads it
    assert out.memory.ltm_tokens.tolist() == [3 * BLOCK] * 2
    none = add_memory(copy.deepcopy(base), training_free={"alpha": 0.0}, **MEMORY).eval()
    torch.testing.assert_close(run(none, x).logits, ref, atol=1e-5, rtol=1e-5)  # α = 0: the base model


def one_layer_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, attention_bias=True,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_a_memory_of_one_repeated_token_returns_that_tokens_value_through_the_layer():
    """A block of one token repeated: every absorbed vector is the same x0 (rotary models put no
    position in the hidden states), so X̄(t) ≈ x0 and the memory's output is W_O(W_V x0 + b_V)
    for any query. Checked against the base model whose attention output is mixed with it by hand."""
    base = one_layer_llama()
    model = add_memory(
        copy.deepcopy(base), training_free={"alpha": 0.7}, block_size=8, num_basis=32, num_samples=64,
        widths=(0.05, 0.1), ridge_lambda=1e-6, sticky=False,
    ).eval()  # fmt: skip
    x = torch.cat([torch.full((1, 8), 7), ids(1, 8, seed=3) % 50], dim=1)
    attention = base.model.layers[0].self_attn
    with torch.no_grad():
        x0 = base.model.layers[0].input_layernorm(base.model.embed_tokens(torch.tensor([[7]])))
        v = attention.v_proj(x0).view(1, 1, 2, 8).repeat_interleave(2, dim=2).flatten(2)  # grouped heads
        m = attention.o_proj(v)  # (1, 1, e)
    hook = attention.register_forward_hook(
        lambda mod, a, kw, out: (0.3 * out[0] + 0.7 * m, *out[1:]), with_kwargs=True
    )
    with torch.no_grad():
        want = base(x[:, 8:]).logits
    hook.remove()
    got = run(model, x).logits[:, 8:]
    torch.testing.assert_close(got, want, atol=5e-3, rtol=1e-2)
    gaussian = add_memory(
        copy.deepcopy(base), training_free={"density": "gaussian", "alpha": 0.7}, block_size=8, num_basis=32,
        num_samples=64, widths=(0.05, 0.1), ridge_lambda=1e-6, sticky=False,
    ).eval()  # fmt: skip
    torch.testing.assert_close(run(gaussian, x).logits[:, 8:], want, atol=2e-2, rtol=1e-2)


def in_chunks(model, x, size):
    """The logits of x fed in chunks of ``size`` tokens, the memory carried (sticky sampling seeded)."""
    memory, parts = None, []
    torch.manual_seed(0)
    with torch.no_grad():
        for s in range(0, x.shape[1], size):
            out = model(x[:, s : s + size], memory=memory)
            memory, parts = out.memory, parts + [out.logits]
    return torch.cat(parts, 1)


def test_chunks_generate_and_save_load_keep_the_training_free_memory(tmp_path):
    model = add_memory(base_model("llama"), training_free=True, **MEMORY).eval()
    x = ids(2, 3 * BLOCK + 5, seed=1)
    whole = run(model, x)
    torch.testing.assert_close(in_chunks(model, x, 3), whole.logits, atol=1e-4, rtol=1e-4)
    gen = model.generate(
        ids(2, 2, seed=2), memory=whole.memory, max_new_tokens=BLOCK, num_beams=2, pad_token_id=1
    )
    assert gen.shape == (2, 2 + BLOCK)
    model.save_pretrained(tmp_path / "full")
    again = from_pretrained(tmp_path / "full").eval()
    assert again.training_free == model.training_free and again.memory_parameters() == []
    torch.testing.assert_close(run(again, x).logits, whole.logits)
    save_memory(model, tmp_path / "adapter")
    assert load_memory(base_model("llama"), tmp_path / "adapter").training_free == model.training_free


def test_bad_training_free_settings_are_clear_errors(tmp_path):
    neox = base_model("gpt_neox")
    before = snapshot(neox)
    with pytest.raises(ValueError, match="training_free is not supported for GPTNeoXForCausalLM"):
        add_memory(neox, training_free=True)
    assert_unchanged(neox, before)  # refused before the model was changed
    with pytest.raises(ValueError, match="density"):
        add_memory(base_model("llama"), training_free={"density": "laplace"})
    with pytest.raises(ValueError, match="alpha"):
        add_memory(base_model("llama"), training_free={"alpha": 2.0})
    with pytest.raises(ValueError, match="combine must be one of"):
        add_memory(base_model("llama"), training_free={"combine": "max"})
    assert TrainingFreeConfig.parse("gaussian:softmax") == TrainingFreeConfig("gaussian", combine="softmax")
    assert TrainingFreeConfig.parse("gibbs:0.3").label == "free_gibbs_a0.3"
    for bad, match in (
        ("gibbs:lots", "expected DENSITY"),
        ("laplace:0.5", "density"),
        ("gibbs:1.5", "alpha"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainingFreeConfig.parse(bad)
    free = add_memory(base_model("llama"), training_free=True, **MEMORY)
    with pytest.raises(ValueError, match="LoRA cannot target the memory"):
        add_lora(free, r=2, target_modules=["q_proj", "query", "value"])
    assert add_lora(
        add_memory(base_model("llama"), training_free=True, **MEMORY), r=2, target_modules=["q_proj"]
    )


def _say_training_free(settings: dict) -> None:
    settings["training_free"] = {"density": "gibbs", "alpha": 0.5}


def test_a_training_free_memory_refuses_weights_and_loading_changes_nothing_then(tmp_path):
    """Saved settings that say training-free beside memory weights (an adapter or a full folder):
    refused, and the model given to load_memory is left as it was."""
    trained = add_memory(base_model("llama"), **MEMORY)
    save_memory(trained, tmp_path / "adapter")
    trained.save_pretrained(tmp_path / "full")
    for path in (tmp_path / "adapter" / "memory_config.json", tmp_path / "full" / "config.json"):
        info = json.loads(path.read_text())
        _say_training_free(info["memory_config" if path.name == "memory_config.json" else "infinite_memory"])
        path.write_text(json.dumps(info))
    base = base_model("llama")
    before = snapshot(base)
    with pytest.raises(ValueError, match="training_free memory has no weights"):
        load_memory(base, tmp_path / "adapter")
    assert_unchanged(base, before)
    free = add_memory(base_model("llama"), training_free={"alpha": 0.3}, **MEMORY)
    before = snapshot(free)
    with pytest.raises(ValueError, match="training_free"):  # its settings differ: refused before the weights
        load_memory(free, tmp_path / "adapter")
    assert_unchanged(free, before)
    assert free.training_free.alpha == 0.3
    with pytest.raises(ValueError, match="training_free memory has no weights"):
        from_pretrained(tmp_path / "full")


def test_a_trained_adapter_is_refused_by_a_training_free_memory_and_states_do_not_cross(tmp_path):
    """load_memory onto a model whose memory differs from the adapter's refuses, naming the
    difference (issue 20: never a silent mix), and changes nothing; onto the base model it loads.
    A state made in one mode is refused by the other (its fingerprint)."""
    trained = add_memory(base_model("llama"), **MEMORY).eval()
    with torch.no_grad():
        for p in trained.memory_parameters():
            p.normal_(0.0, 0.5)
    save_memory(trained, tmp_path / "adapter")
    free = add_memory(base_model("llama"), training_free=True, **MEMORY).eval()
    x = ids(1, 2 * BLOCK, seed=4)
    free_state = run(free, x).memory
    with pytest.raises(ValueError, match="training_free"):
        trained(x[:, :3], memory=free_state)
    before = {k: v.clone() for k, v in free.state_dict().items()}
    with pytest.raises(ValueError, match="settings differ.*training_free"):
        load_memory(free, tmp_path / "adapter")
    assert free.training_free is not None and free.state_dict().keys() == before.keys()
    assert all(torch.equal(free.state_dict()[k], v) for k, v in before.items())
    loaded = load_memory(base_model("llama"), tmp_path / "adapter")
    assert loaded.training_free is None and "training_free" not in loaded.config.infinite_memory
    for a, b in zip(loaded.memory_parameters(), trained.memory_parameters(), strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(run(loaded, x).logits, run(trained, x).logits)


def test_a_query_reads_the_part_of_the_memory_that_matches_it():
    """Memory: 8 tokens A then 8 tokens B. With W_Q ∝ W_K = slices of I the score of the reconstructed
    token at t is ∝ x · X̄(t) per head, so the Gibbs density of a query A sits on the A half: its read is A's value, B's
    for a query B (α = 1: the attention output is the memory's)."""
    base = one_layer_llama()
    attention = base.model.layers[0].self_attn
    with (
        torch.no_grad()
    ):  # each query head h sees x's slice of its key head (h // 2), scaled up: a peaked density
        attention.k_proj.weight.copy_(torch.eye(32)[:16])
        attention.q_proj.weight.copy_(
            4 * torch.eye(32)[:16].view(2, 1, 8, 32).expand(2, 2, 8, 32).reshape(32, 32)
        )
        attention.q_proj.bias.zero_()
        attention.k_proj.bias.zero_()
    model = add_memory(
        copy.deepcopy(base), training_free={"alpha": 1.0}, block_size=16, num_basis=32, num_samples=64,
        widths=(0.05, 0.1), ridge_lambda=1e-6, sticky=False,
    ).eval()  # fmt: skip
    a, b = 7, 21
    x = torch.tensor([[a] * 8 + [b] * 8 + [a, b]])
    got = run(model, x).logits[0, 16:]  # (2, vocab): the queries A and B

    def replaced(token):  # the base model whose attention output is W_O(W_V x_token + b_V)
        with torch.no_grad():
            x0 = base.model.layers[0].input_layernorm(base.model.embed_tokens(torch.tensor([[token]])))
            m = attention.o_proj(attention.v_proj(x0).view(1, 1, 2, 8).repeat_interleave(2, dim=2).flatten(2))
        hook = attention.register_forward_hook(
            lambda mod, args, kw, out: (m.expand_as(out[0]), *out[1:]), with_kwargs=True
        )
        with torch.no_grad():
            logits = base(x[:, 16:]).logits[0]
        hook.remove()
        return logits

    want_a, want_b = replaced(a), replaced(b)
    gap = (want_a - want_b).norm(dim=-1)  # (2,)
    assert float(gap.min()) > 0.1
    assert (got[0] - want_a[0]).norm() < 0.1 * gap[0]  # the query A reads A
    assert (got[1] - want_b[1]).norm() < 0.1 * gap[1]  # the query B reads B


def test_the_softmax_combine_is_one_attention_over_the_block_and_the_memory_as_its_tokens():
    """combine="softmax" equals, computed by hand, one softmax over the block's rotated causal keys and
    the memory's M grid keys X̄(t_g) W_K (not rotated, scores + log(n / M) for the n absorbed tokens),
    its values the block's and the memory's, then W_O: the base model with that attention output."""
    base = one_layer_llama()
    model = add_memory(
        copy.deepcopy(base), training_free={"combine": "softmax"}, block_size=8, num_basis=16,
        num_samples=12, sticky=False,
    ).eval()  # fmt: skip
    x = ids(1, 13, seed=4) % 50
    first = run(model, x[:, :8])
    second = run(model, x[:, 8:], memory=first.memory)  # absorbs the first block, then 5 queries read it
    assert second.memory.ltm[0].length.tolist() == [8]
    attention, ltm = base.model.layers[0].self_attn, model.ltm[0]
    with torch.no_grad():
        h = base.model.layers[0].input_layernorm(base.model.embed_tokens(x[:, 8:]))  # (1, 5, e)
        cos, sin = base.model.rotary_emb(h, torch.arange(5)[None])  # the block's positions 0..4
        heads = lambda t, n: t.view(1, -1, n, 8).transpose(1, 2).repeat_interleave(4 // n, dim=1)  # noqa: E731
        q, k, v = heads(attention.q_proj(h), 4), heads(attention.k_proj(h), 2), heads(attention.v_proj(h), 2)
        q_rot, k_rot = apply_rotary_pos_emb(q, k, cos, sin)
        tokens = ltm.grid(h)[1] @ second.memory.ltm[0].coeffs  # X̄(t_g): (1, M, e)
        k_mem, v_mem = heads(attention.k_proj(tokens), 2), heads(attention.v_proj(tokens), 2)
        s_block = (q_rot @ k_rot.transpose(-1, -2) / 8**0.5).masked_fill(
            torch.ones(5, 5).triu(1).bool(), -1e30
        )
        s_memory = q @ k_mem.transpose(-1, -2) / 8**0.5 + math.log(8 / 12)  # 8 tokens on 12 grid points
        p = torch.softmax(torch.cat([s_block, s_memory], dim=-1), dim=-1)  # (1, H, 5, 5 + M)
        m = attention.o_proj((p @ torch.cat([v, v_mem], dim=2)).transpose(1, 2).flatten(2))  # (1, 5, e)
    hook = attention.register_forward_hook(lambda mod, a, kw, out: (m, *out[1:]), with_kwargs=True)
    with torch.no_grad():
        want = base(x[:, 8:]).logits
    hook.remove()
    torch.testing.assert_close(second.logits, want, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        first.logits, run(base, x[:, :8]).logits, atol=1e-5, rtol=1e-5
    )  # no memory yet


@pytest.mark.parametrize("family", FREE)
def test_the_softmax_combine_streams_in_chunks_as_in_one_call(family):
    """The softmax combine re-attends to the block's cached keys: token by token (the cache holding the
    block so far), in chunks and in one call give the same logits; the memory changes them."""
    model = add_memory(base_model(family), training_free={"combine": "softmax"}, **MEMORY).eval()
    x = ids(2, 2 * BLOCK + 5, seed=1)
    whole = run(model, x)
    torch.testing.assert_close(in_chunks(model, x, 3), whole.logits, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        ref = base_model(family)(x[:, BLOCK : 2 * BLOCK]).logits
    torch.testing.assert_close(whole.logits[:, :BLOCK], run(base_model(family), x[:, :BLOCK]).logits)
    assert (whole.logits[:, BLOCK : 2 * BLOCK] - ref).abs().amax(-1).min() > 1e-4


def block_attention_is_recomputed(family: str, base=None) -> None:
    """combine="softmax" recomputes each memory layer's own attention over the block (its rotary, partial
    rotary, grouped heads, q/k norms and scaling as the family has them): W_O a_h + b_O equals the
    attention output the layer computed. base: the model (default: the family's tiny one)."""
    base = base_model(family) if base is None else base
    model = add_memory(base, training_free={"combine": "softmax"}, **MEMORY).eval()
    layers = model.memory_config.layer_ids(len(model.decoder_layout.layers))
    seen = []

    def check(i, ltm):
        def hook(module, args, kwargs, out):
            x = args[0] if args else kwargs["hidden_states"]
            cache = kwargs.get("cache") or kwargs.get("past_key_values")
            n = x.shape[1]
            mask = torch.ones(n, n, dtype=torch.bool).tril()[None].expand(x.shape[0], n, n)
            block = BlockAttention(out[0], cache.layers[i].keys, cache.layers[i].values, mask,
                                   kwargs.get("position_embeddings"))  # fmt: skip
            a, _ = ltm.block_attention(x, block)
            seen.append((ltm.projections_of_layer.output(a.to(x.dtype)), out[0]))

        return hook

    attentions = model.decoder_layout.attentions
    handles = [
        attentions[i].register_forward_hook(check(i, ltm), with_kwargs=True)
        for i, ltm in zip(layers, model.ltm)
    ]
    run(model, ids(2, BLOCK))
    for h in handles:
        h.remove()
    assert len(seen) == len(layers)
    for got, want in seen:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", FREE)
def test_the_softmax_combine_recomputes_the_blocks_own_attention(family):
    block_attention_is_recomputed(family)


def test_the_softmax_combine_leaves_the_queries_of_a_layer_without_rotary_unrotated():
    """SmolLM3's NoPE layers get rotary embeddings but do not use them: neither does the recomputation."""
    config = family_config("smollm3")
    config.no_rope_layers = [1, 0]  # the second layer without rotary
    torch.manual_seed(0)
    block_attention_is_recomputed("smollm3", AutoModelForCausalLM.from_config(config).eval())
