"""GPT-2 + long-term memory as a transformers model (src/infinite_former/hf).

Tiny random GPT-2 checkpoints written to a temp folder; no network.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from hf_testing import feed_one_by_one
from infinite_former.attention import LongTermAttention
from infinite_former.hf import (
    InfiniteGPT2Config,
    InfiniteGPT2LMHeadModel,
    InfiniteGPT2Memory,
    InfiniteGPT2Stream,
)

VOCAB = 100
BLOCK = 8
MEMORY = dict(block_size=BLOCK, num_basis=16, num_samples=16, num_bins=8)


def tiny_gpt2_config() -> GPT2Config:
    return GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0
    )


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2_config()).eval()
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def plain(plain_dir):
    return GPT2LMHeadModel.from_pretrained(plain_dir).eval()


def load(plain_dir, **overrides) -> InfiniteGPT2LMHeadModel:
    return InfiniteGPT2LMHeadModel.from_pretrained(plain_dir, **{**MEMORY, **overrides}).eval()


def perturb_ltm(model: InfiniteGPT2LMHeadModel, seed: int = 1, scale: float = 0.5) -> None:
    """Random LTM weights (so that its output is not zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.memory_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def plain_block_logits(plain: GPT2LMHeadModel, x: torch.Tensor) -> torch.Tensor:
    """Plain GPT-2 run on each block separately (positions restart), logits concatenated."""
    with torch.no_grad():
        return torch.cat([plain(x[:, s : s + BLOCK]).logits for s in range(0, x.shape[1], BLOCK)], dim=1)


# ------------------------------------------------------------------ loading / init


def test_loading_plain_gpt2_initialises_only_the_memory(plain_dir):
    model, info = InfiniteGPT2LMHeadModel.from_pretrained(plain_dir, output_loading_info=True, **MEMORY)
    assert info["missing_keys"] and all(k.startswith("ltm.") for k in info["missing_keys"])
    assert not info["unexpected_keys"]
    assert len(model.ltm) == model.config.n_layer == 2
    for ltm in model.ltm:
        assert isinstance(ltm, LongTermAttention)
        assert torch.count_nonzero(ltm.out.weight) == 0 and torch.count_nonzero(ltm.out.bias) == 0
        assert torch.count_nonzero(ltm.key.weight) > 0  # the other new weights are random
        fresh = type(ltm.basis)(ltm.basis.num_basis, ltm.basis.widths)
        for name, buf in fresh.named_buffers():  # RBF layout buffers rebuilt, not left empty
            torch.testing.assert_close(getattr(ltm.basis, name), buf)
    assert model.config.model_type == "infinite-gpt2"
    assert model.config.block_size == BLOCK


def test_init_logits_equal_plain_gpt2_across_blocks(plain_dir, plain):
    model = load(plain_dir)
    x = ids(2, 5 * BLOCK + 3)
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out.logits, plain_block_logits(plain, x), atol=1e-5, rtol=1e-5)
    # the memory is really non-empty (its output is zero only because W_O = 0)
    assert out.memory.ltm_tokens.tolist() == [5 * BLOCK] * 2
    assert out.memory.position == 3
    assert all(float(s.coeffs.abs().sum()) > 0 for s in out.memory.ltm)


def test_memory_subset_of_layers(plain_dir, plain):
    model = load(plain_dir, memory_layers=[1])
    assert len(model.ltm) == 1
    perturb_ltm(model)
    x = ids(1, 3 * BLOCK)
    with torch.no_grad():
        logits = model(x).logits
    ref = plain_block_logits(plain, x)
    torch.testing.assert_close(logits[:, :BLOCK], ref[:, :BLOCK], atol=1e-5, rtol=1e-5)
    assert (logits[:, BLOCK:] - ref[:, BLOCK:]).abs().max() > 1e-3


def test_perturbed_memory_changes_logits_only_once_it_is_filled(plain_dir, plain):
    model = load(plain_dir)
    perturb_ltm(model)
    x = ids(2, 3 * BLOCK)
    torch.manual_seed(0)
    with torch.no_grad():
        logits = model(x).logits
    ref = plain_block_logits(plain, x)
    torch.testing.assert_close(logits[:, :BLOCK], ref[:, :BLOCK], atol=1e-5, rtol=1e-5)  # empty memory
    assert (logits[:, BLOCK:] - ref[:, BLOCK:]).abs().max() > 1e-2  # memory is used


def test_memory_content_matters(plain_dir):
    """Same current block, different earlier text -> different logits (information flows through the LTM)."""
    model = load(plain_dir)
    perturb_ltm(model)
    block = ids(1, BLOCK, seed=5)
    a = torch.cat([ids(1, 2 * BLOCK, seed=1), block], dim=1)
    b = torch.cat([ids(1, 2 * BLOCK, seed=2), block], dim=1)
    with torch.no_grad():
        la = model(a).logits[:, -BLOCK:]
        lb = model(b).logits[:, -BLOCK:]
    assert (la - lb).abs().max() > 1e-3


def test_chunking_does_not_change_results(plain_dir):
    """One call over 3.5 blocks == the same tokens fed in uneven pieces with the memory passed along."""
    model = load(plain_dir)
    perturb_ltm(model)
    x = ids(2, 3 * BLOCK + 4)
    with torch.no_grad():
        torch.manual_seed(3)
        whole = model(x).logits
        torch.manual_seed(3)
        memory, parts = None, []
        for s, e in [(0, 5), (5, 6), (6, 19), (19, x.shape[1])]:
            out = model(x[:, s:e], memory=memory)
            memory = out.memory
            parts.append(out.logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=1e-4)


def test_cached_read_equals_core_attend():
    """The HF path's read (projections once per block, reused, mass accumulated, padding masked)
    is the core layer's: reading a block in pieces with one set of projections equals attend()."""
    torch.manual_seed(0)
    ltm = LongTermAttention(InfiniteGPT2Config(n_embd=32, n_head=2, n_layer=1, **MEMORY).ltm_config())
    with torch.no_grad():
        ltm.out.weight.normal_()
    state = ltm.update(ltm.init_state(3), torch.randn(3, BLOCK, 32))
    state = ltm.update(state, torch.randn(3, BLOCK, 32))
    queries = torch.randn(3, 5, 32)
    with torch.no_grad():
        ref_out, ref_state, ref_kl = ltm.attend(queries, state)
        proj = ltm.projections(state, queries.dtype)
        zero = replace(state, bin_mass=torch.zeros_like(state.bin_mass))
        out_a, mid, kl_a = ltm.read(queries[:, :2], zero, proj, accumulate_mass=True)
        out_b, new_state, kl_b = ltm.read(queries[:, 2:], mid, proj, accumulate_mass=True)
        # a padding query (mask False) adds no mass and no KL
        pad = torch.tensor([[True, False]] * 3)
        _, padded, kl_p = ltm.read(queries[:, :2], zero, proj, query_mask=pad)
        _, alone, _ = ltm.read(queries[:, :1], zero, proj)
    torch.testing.assert_close(torch.cat([out_a, out_b], 1), ref_out, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat([kl_a, kl_b], 2), ref_kl, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(new_state.bin_mass, ref_state.bin_mass, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(padded.bin_mass, alone.bin_mass, atol=1e-6, rtol=1e-5)
    assert float(kl_p[:, :, 1].abs().max()) == 0 and float(kl_p[:, :, 0].min()) > 0


# ------------------------------------------------------------------ save / load


def test_save_load_round_trip(plain_dir, tmp_path):
    model = load(plain_dir)
    perturb_ltm(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    again = InfiniteGPT2LMHeadModel.from_pretrained(tmp_path).eval()
    auto = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(auto, InfiniteGPT2LMHeadModel)
    assert again.config.block_size == BLOCK and again.config.ltm["num_basis"] == 16
    x = ids(2, 3 * BLOCK + 2)
    results = []
    for m in (model, again, auto):
        torch.manual_seed(7)  # sticky sampling draws random numbers
        with torch.no_grad():
            results.append(m(x).logits)
    torch.testing.assert_close(results[1], results[0], atol=0, rtol=0)
    torch.testing.assert_close(results[2], results[0], atol=0, rtol=0)


def test_memory_save_load(plain_dir, tmp_path):
    model = load(plain_dir)
    perturb_ltm(model)
    with torch.no_grad():
        memory = model(ids(2, 2 * BLOCK + 3)).memory
        memory.save(tmp_path / "memory.pt")
        again = InfiniteGPT2Memory.load(tmp_path / "memory.pt")
        assert again.position == 3 and again.ltm_tokens.tolist() == [2 * BLOCK] * 2
        nxt = ids(2, BLOCK)
        torch.manual_seed(0)
        a = model(nxt, memory=memory).logits
        torch.manual_seed(0)
        b = model(nxt, memory=again).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ValueError, match="missing"):
        InfiniteGPT2Memory.from_state_dict({"pending.0": torch.zeros(1)})


# ------------------------------------------------------------------ generation


@pytest.mark.parametrize("sticky", [True, False])
def test_generate_equals_feeding_tokens_one_by_one(plain_dir, sticky):
    model = load(plain_dir, sticky=sticky)
    perturb_ltm(model, scale=0.3)
    context = ids(2, 2 * BLOCK + 3, seed=4)
    with torch.no_grad():
        memory = model(context).memory  # 2 blocks absorbed... once the 3rd starts; 3 tokens pending
    prompt = ids(2, 4, seed=6)
    steps = 2 * BLOCK + 2  # crosses two block boundaries while generating
    torch.manual_seed(11)
    out = model.generate(
        prompt,
        memory=memory,
        max_new_tokens=steps,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(11)
    ref_tokens, ref_logits = feed_one_by_one(model, memory, prompt, steps)
    assert torch.equal(out.sequences[:, : prompt.shape[1]], prompt)
    assert torch.equal(out.sequences[:, prompt.shape[1] :], ref_tokens)
    torch.testing.assert_close(torch.stack(out.logits, dim=1), ref_logits, atol=1e-4, rtol=1e-4)
    # the returned memory: prompt + all generated tokens but the last were fed
    assert isinstance(out.memory, InfiniteGPT2Memory)
    assert out.memory.num_tokens.tolist() == [context.shape[1] + prompt.shape[1] + steps - 1] * 2
    assert memory.position == 3  # the memory passed in is not modified


def test_generate_without_memory_matches_plain_gpt2_inside_one_block(plain_dir, plain):
    model = load(plain_dir)
    prompt = ids(1, 3, seed=2)
    a = model.generate(prompt, max_new_tokens=BLOCK - 3, do_sample=False, pad_token_id=0, eos_token_id=None)
    b = plain.generate(prompt, max_new_tokens=BLOCK - 3, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(a, b)


def test_stream_memory_survives_between_generate_calls_and_reset(plain_dir):
    model = load(plain_dir)
    perturb_ltm(model, scale=0.3)
    text = ids(1, 3 * BLOCK + 5, seed=8)[0]

    torch.manual_seed(0)
    stream = InfiniteGPT2Stream(model).read(text)
    assert stream.num_tokens == text.numel()
    assert int(stream.memory.ltm_tokens) == 3 * BLOCK
    first = stream.generate(max_new_tokens=6)
    kept = stream.memory
    second = stream.generate(max_new_tokens=7)
    assert kept.num_tokens.item() == text.numel() + 5  # a generate call leaves earlier memories intact

    torch.manual_seed(0)
    one_go = InfiniteGPT2Stream(model).read(text).generate(max_new_tokens=13)
    assert torch.equal(torch.cat([first, second], dim=1), one_go)  # second call continued the first
    assert stream.num_tokens == text.numel() + 13

    # the memory matters: without the text the continuation differs
    torch.manual_seed(0)
    no_text = InfiniteGPT2Stream(model).read(text[-1:]).generate(max_new_tokens=13)
    assert not torch.equal(no_text, one_go)

    stream.reset()
    assert stream.num_tokens == 0 and int(stream.memory.ltm_tokens) == 0 and stream.memory.position == 0
    torch.manual_seed(0)
    after_reset = stream.read(text[-1:]).generate(max_new_tokens=13)
    assert torch.equal(after_reset, no_text)


def test_sampling_runs_through_generation_mixin(plain_dir):
    stream = InfiniteGPT2Stream(load(plain_dir)).read(ids(1, 2 * BLOCK + 2)[0])
    torch.manual_seed(0)
    a = stream.generate(max_new_tokens=BLOCK, do_sample=True, top_p=0.9, temperature=1.5, eos_token_id=None)
    assert a.shape == (1, BLOCK) and int(a.min()) >= 0 and int(a.max()) < VOCAB
    assert stream.num_tokens == 3 * BLOCK + 2


def test_stream_reads_text_with_a_tokenizer(plain_dir):
    class CharTokenizer:
        def encode(self, s):
            return [ord(c) % VOCAB for c in s]

        def decode(self, ids):
            return "".join(chr(65 + i % 26) for i in ids)

    stream = InfiniteGPT2Stream(load(plain_dir), tokenizer=CharTokenizer())
    stream.read("hello world, " * 5)
    assert stream.num_tokens == 65
    new = stream.generate(" and", max_new_tokens=3, eos_token_id=None)
    assert new.shape == (1, 3) and len(stream.decode(new)[0]) == 3


def test_memory_size_is_independent_of_tokens_read(plain_dir):
    model = load(plain_dir)
    with torch.no_grad():
        short = model(ids(1, 2 * BLOCK + 1)).memory
        long = model(ids(1, 12 * BLOCK + 1)).memory

    def sizes(m):
        return [t.numel() for s in m.ltm for t in (s.coeffs, s.bin_mass)] + [k.numel() for k, _ in m.kv]

    assert sizes(short) == sizes(long)
    assert int(long.ltm_tokens) == 12 * BLOCK


def test_reset_rows_at_block_boundary(plain_dir):
    model = load(plain_dir)
    perturb_ltm(model)
    x = ids(2, 2 * BLOCK, seed=3)
    nxt = ids(2, BLOCK, seed=4)
    with torch.no_grad():
        torch.manual_seed(0)
        memory = model(x).memory  # a complete block pending
        kept = model(nxt, memory=memory).logits
        torch.manual_seed(0)
        reset = memory.reset(torch.tensor([True, False]))
        logits = model(nxt, memory=reset).logits
        fresh = model(nxt[:1]).logits  # row 0 forgot everything: like an empty memory
    torch.testing.assert_close(logits[1], kept[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[:1], fresh, atol=1e-5, rtol=1e-4)
    assert (logits[0] - kept[0]).abs().max() > 1e-3


def test_reset_rows_mid_block_is_a_fresh_stream(plain_dir):
    """A row reset in the middle of a block forgets its block and memory; the other row goes on."""
    model = load(plain_dir)
    perturb_ltm(model)
    x, nxt = ids(2, 2 * BLOCK + 3, seed=3), ids(2, BLOCK + 2, seed=4)
    with torch.no_grad():
        memory = model(x).memory
        torch.manual_seed(0)  # sticky sampling draws random numbers when a block is absorbed
        kept = model(nxt, memory=memory).logits
        torch.manual_seed(0)
        logits = model(nxt, memory=memory.reset(torch.tensor([True, False]))).logits
        fresh = model(nxt[:1]).logits
    torch.testing.assert_close(logits[:1], fresh, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1], kept[1], atol=1e-5, rtol=1e-4)


def test_reset_rows_of_an_empty_block_keeps_the_next_block(plain_dir):
    model = load(plain_dir)
    memory = model.init_memory(2).reset(torch.tensor([True, False]))
    with torch.no_grad():
        out = model(ids(2, BLOCK + 1), memory=memory)
    assert out.memory.ltm_tokens.tolist() == [BLOCK, BLOCK]  # the first block was absorbed in both rows


# ------------------------------------------------------------------ training


def test_training_loss_has_kl_and_trains_the_memory(plain_dir):
    model = load(plain_dir, kl_weight=0.1)
    model.train()
    x = ids(2, 3 * BLOCK, seed=9)
    out = model(x, labels=x)
    assert out.kl > 0
    torch.testing.assert_close(out.loss, out.lm_loss + 0.1 * out.kl)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("ltm.")}
    assert grads["ltm.0.out.weight"] is not None and grads["ltm.0.out.weight"].abs().sum() > 0
    assert model.transformer.wte.weight.grad is not None
    assert len(model.memory_parameters()) + len(model.base_parameters()) == len(list(model.parameters()))
    groups = model.param_groups(lr=5e-5, memory_lr=2.5e-4)
    assert [g["lr"] for g in groups] == [5e-5, 2.5e-4]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.ltm.parameters()}
    torch.optim.AdamW(groups).step()  # a valid optimizer setup
    # a memory read without gradients (it carries cached projections) still trains every LTM weight
    with torch.no_grad():
        memory = model.eval()(x[:, : 2 * BLOCK + 3]).memory  # mid-block: no absorb on the next call
    assert memory.ltm_cache is not None
    model.train().zero_grad()
    with torch.no_grad():
        for ltm in model.ltm:
            ltm.out.weight.normal_()
    model(x[:, :4], memory=memory, labels=x[:, :4]).loss.backward()
    for name in ("query", "key", "value", "mu_proj", "sigma_proj"):
        assert model.ltm[0].get_submodule(name).weight.grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        ev = model(x, labels=x)
    torch.testing.assert_close(ev.loss, ev.lm_loss)  # no KL term outside training


def test_shift_labels_score_a_stream_fed_in_pieces(plain_dir):
    model = load(plain_dir)
    perturb_ltm(model)
    x = ids(2, 3 * BLOCK + 1, seed=12)
    with torch.no_grad():
        torch.manual_seed(0)
        whole = model(x, labels=x).loss  # 3 * BLOCK predictions
        torch.manual_seed(0)
        first = model(x[:, :13], shift_labels=x[:, 1:14])
        second = model(x[:, 13:-1], memory=first.memory, shift_labels=x[:, 14:])
    pieces = (first.loss * 13 + second.loss * (3 * BLOCK - 13)) / (3 * BLOCK)
    torch.testing.assert_close(pieces, whole, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ bad inputs


def test_block_longer_than_positions_is_a_clear_error(plain_dir):
    with pytest.raises(ValueError, match="n_positions"):
        InfiniteGPT2LMHeadModel.from_pretrained(plain_dir, **{**MEMORY, "block_size": 65})
    with pytest.raises(ValueError, match="block_size"):
        InfiniteGPT2Config(n_positions=64, block_size=128)
    cfg = InfiniteGPT2Config(n_positions=64, n_layer=1, n_embd=32, n_head=2, **MEMORY)
    cfg.block_size = 100
    with pytest.raises(ValueError, match="n_positions"):
        InfiniteGPT2LMHeadModel(cfg)


def test_bad_inputs(plain_dir):
    model = load(plain_dir)
    with torch.no_grad():
        memory = model(ids(2, 3)).memory
    with pytest.raises(ValueError, match="batch size"):
        model(ids(1, 2), memory=memory)
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="memory"):
        model(ids(1, 2), past_key_values=((torch.zeros(1), torch.zeros(1)),))
    with pytest.raises(ValueError, match="shift_labels"):
        model(ids(1, 4), shift_labels=ids(1, 3))
    with pytest.raises(ValueError, match="attention_mask"):  # padding is supported; a mask too short is not
        model(ids(1, 2), attention_mask=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="memory_layers"):
        InfiniteGPT2Config(n_layer=2, memory_layers=[2])
    with pytest.raises(ValueError, match="memory="):
        model.generate(ids(1, 2), past_key_values=memory, max_new_tokens=2)
    with pytest.raises(ValueError, match="nothing to continue"):
        InfiniteGPT2Stream(model).generate(max_new_tokens=2)
