"""add_memory for any transformers causal LM (src/infinite_former/hf/causal_lm.py).

Tiny random Llama, Qwen2, Mistral, GPT-NeoX and GPT-2 configs built here; no network.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    T5Config,
    T5ForConditionalGeneration,
)

from hf_testing import feed_one_by_one
from infinite_former.hf import (
    HFMemoryState,
    InfiniteGPT2Stream,
    MemoryCausalLM,
    add_memory,
    from_pretrained,
    load_memory,
    save_memory,
)

VOCAB = 100
BLOCK = 8
MEMORY = dict(block_size=BLOCK, num_basis=16, num_samples=16, num_bins=8)
COMMON = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=1, pad_token_id=1)


def family_config(name: str):
    rope = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    if name == "llama":
        return LlamaConfig(**rope, num_key_value_heads=2, max_position_embeddings=64, **COMMON)
    if name == "qwen2":
        return Qwen2Config(**rope, num_key_value_heads=2, max_position_embeddings=64, **COMMON)
    if name == "mistral":
        return MistralConfig(
            **rope, num_key_value_heads=2, max_position_embeddings=64, sliding_window=None, **COMMON
        )
    if name == "gpt_neox":
        return GPTNeoXConfig(**rope, max_position_embeddings=64, **COMMON)
    if name == "gpt2":
        return GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=64, **COMMON)
    if name in MORE_FAMILIES:  # transformers v5 decoders that fit hf/layout.py's rule (test_hf_support.py)
        import transformers

        config = getattr(transformers, MORE_FAMILIES[name])(**rope, max_position_embeddings=64, **COMMON)
        if getattr(config, "num_key_value_heads", None) is not None:
            config.num_key_value_heads = 2
        if getattr(config, "sliding_window", None) is not None:
            config.sliding_window = 64  # sliding layers keep a whole block (block_size <= the window)
        return config
    raise KeyError(name)


MORE_FAMILIES = {
    "olmo": "OlmoConfig",
    "olmo2": "Olmo2Config",
    "qwen3": "Qwen3Config",
    "granite": "GraniteConfig",
    "stablelm": "StableLmConfig",
    "cohere": "CohereConfig",
    "smollm3": "SmolLM3Config",
    "gemma": "GemmaConfig",
    "gemma2": "Gemma2Config",
    "phi": "PhiConfig",
    "phi3": "Phi3Config",
    "starcoder2": "Starcoder2Config",
    "glm": "GlmConfig",
}


FAMILIES = ["llama", "qwen2", "mistral", "gpt_neox", "gpt2"]


def base_model(name: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(family_config(name)).eval()


def memory_model(name: str, seed: int = 1, scale: float = 0.5, **overrides):
    """The family's tiny model with memory, its LTM weights random (so that its output is not zero)."""
    model = add_memory(base_model(name), **{**MEMORY, **overrides}).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.memory_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return model


def ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def run(model, x, memory=None, seed=0, **kwargs):
    torch.manual_seed(seed)  # sticky sampling draws random numbers
    with torch.no_grad():
        return model(x, memory=memory, **kwargs)


# ------------------------------------------------------------------ the block scheme


@pytest.mark.parametrize("family", FAMILIES)
def test_starts_equal_to_the_base_model_on_each_block(family):
    base = base_model(family)
    model = add_memory(copy.deepcopy(base), **MEMORY).eval()
    assert isinstance(model, MemoryCausalLM) and isinstance(model, type(base))
    assert type(model).__name__ == type(base).__name__ and len(model.ltm) == 2
    assert all(int(torch.count_nonzero(m.out.weight)) == 0 for m in model.ltm)  # W_O = 0: output starts at 0
    x = ids(2, 3 * BLOCK + 3)
    out = run(model, x)
    with torch.no_grad():
        ref = torch.cat([base(x[:, s : s + BLOCK]).logits for s in range(0, x.shape[1], BLOCK)], dim=1)
    torch.testing.assert_close(out.logits, ref, atol=1e-5, rtol=1e-5)
    assert out.memory.ltm_tokens.tolist() == [3 * BLOCK] * 2 and out.memory.position == 3
    assert all(float(s.coeffs.abs().sum()) > 0 for s in out.memory.ltm)  # the memory is really filled


@pytest.mark.parametrize("family", FAMILIES)
def test_chunks_of_1_7_and_all_give_the_same_logits(family):
    model = memory_model(family)  # sticky on (the default)
    x = ids(2, 3 * BLOCK + 5, seed=1)
    whole = run(model, x).logits
    ref = run(memory_model(family, seed=2), x).logits
    assert (whole - ref).abs().max() > 1e-3  # the memory is used: other memory weights, other logits
    for size in (1, 7):
        memory, parts = None, []
        torch.manual_seed(0)
        with torch.no_grad():
            for s in range(0, x.shape[1], size):
                out = model(x[:, s : s + size], memory=memory)
                memory, parts = out.memory, parts + [out.logits]
        torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_memory_content_matters(family):
    model = memory_model(family)
    block = ids(1, BLOCK, seed=5)
    a = run(model, torch.cat([ids(1, 2 * BLOCK, seed=1), block], 1)).logits[:, -BLOCK:]
    b = run(model, torch.cat([ids(1, 2 * BLOCK, seed=2), block], 1)).logits[:, -BLOCK:]
    assert (a - b).abs().max() > 1e-3


def test_state_has_the_same_size_after_4_and_12_blocks():
    model = memory_model("llama")
    short = run(model, ids(1, 4 * BLOCK + 1)).memory
    long = run(model, ids(1, 12 * BLOCK + 1)).memory

    def sizes(m: HFMemoryState):
        tensors = (
            [t for s in m.ltm for t in s.state_dict().values()]
            + list(m.pending)
            + [t for kv in m.kv for t in kv]
        )
        return [tuple(t.shape) for t in tensors]

    assert sizes(short) == sizes(long)
    assert int(short.ltm_tokens) == 4 * BLOCK and int(long.ltm_tokens) == 12 * BLOCK


def test_memory_layers_subset_and_training_loss():
    model = memory_model("qwen2", memory_layers=[1], kl_weight=0.1)
    assert len(model.ltm) == 1 and model.config.infinite_memory["memory_layers"] == [1]
    model.train()
    x = ids(2, 3 * BLOCK, seed=9)
    out = model(x, labels=x)
    assert out.kl > 0
    torch.testing.assert_close(out.loss, out.lm_loss + 0.1 * out.kl)
    out.loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.ltm.parameters())
    groups = model.param_groups(lr=1e-5, memory_lr=1e-3)
    assert [g["lr"] for g in groups] == [1e-5, 1e-3]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.ltm.parameters()}


# ------------------------------------------------------------------ generate


GEN = dict(eos_token_id=None, pad_token_id=1)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_equals_a_token_by_token_loop_across_blocks(family):
    model = memory_model(family, scale=0.3)
    memory = run(model, ids(2, 2 * BLOCK + 3, seed=4)).memory
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
        **GEN,
    )
    torch.manual_seed(11)
    ref_tokens, ref_logits = feed_one_by_one(model, memory, prompt, steps)
    assert torch.equal(out.sequences[:, 4:], ref_tokens)
    torch.testing.assert_close(torch.stack(out.logits, dim=1), ref_logits, atol=1e-4, rtol=1e-4)
    assert isinstance(out.memory, HFMemoryState)
    assert out.memory.num_tokens.tolist() == [2 * BLOCK + 3 + 4 + steps - 1] * 2


def test_sampling_top_p_and_top_k():
    model = memory_model("mistral", scale=0.3)
    memory = run(model, ids(1, 2 * BLOCK + 2)).memory
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        outs.append(
            model.generate(
                ids(1, 3), memory=memory, max_new_tokens=BLOCK, do_sample=True, top_p=0.9, top_k=20, **GEN
            )
        )
    assert outs[0].shape == (1, 3 + BLOCK) and torch.equal(outs[0], outs[1])  # seeded: reproducible
    assert int(outs[0].min()) >= 0 and int(outs[0].max()) < VOCAB


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_beam_search_equals_each_row_alone(family):
    model = memory_model(family, scale=0.3, sticky=False)  # sticky sampling draws depend on the batch
    context = ids(2, 2 * BLOCK + 5, seed=7)
    prompt = ids(2, 3, seed=8)
    kwargs = dict(num_beams=3, max_new_tokens=BLOCK + 4, do_sample=False, **GEN)
    memory = run(model, context).memory
    both = model.generate(prompt, memory=memory, **kwargs)
    for row in range(2):
        alone_memory = run(model, context[row : row + 1]).memory
        alone = model.generate(prompt[row : row + 1], memory=alone_memory, **kwargs)
        assert torch.equal(both[row], alone[0])
    no_memory = model.generate(prompt, **kwargs)
    assert not torch.equal(no_memory, both)  # the memory (expanded to the beams) is used


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gpt2"])
def test_left_padded_batch_equals_each_row_alone(family):
    model = memory_model(family, scale=0.3, sticky=False)
    rows = [ids(1, 5, seed=10)[0], ids(1, 2 * BLOCK + 3, seed=11)[0]]  # different lengths, across a block
    width = max(len(r) for r in rows)
    batch = torch.ones(2, width, dtype=torch.long)  # pad id 1
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    kwargs = dict(
        max_new_tokens=2 * BLOCK, do_sample=False, return_dict_in_generate=True, output_logits=True, **GEN
    )
    out = model.generate(batch, attention_mask=mask, **kwargs)
    logits = torch.stack(out.logits, dim=1)
    for i, r in enumerate(rows):
        alone = model.generate(r[None], **kwargs)
        assert torch.equal(out.sequences[i, width:], alone.sequences[0, len(r) :])
        torch.testing.assert_close(logits[i], torch.stack(alone.logits, dim=1)[0], atol=1e-4, rtol=1e-4)
    assert out.memory.num_tokens.tolist() == [len(r) + 2 * BLOCK - 1 for r in rows]  # per-row lengths


def test_stream_works_for_any_model():
    model = memory_model("qwen2", scale=0.3)
    text = ids(1, 3 * BLOCK + 5, seed=8)[0]
    torch.manual_seed(0)
    stream = InfiniteGPT2Stream(model).read(text)
    first, second = stream.generate(max_new_tokens=6, **GEN), stream.generate(max_new_tokens=7, **GEN)
    torch.manual_seed(0)
    one_go = InfiniteGPT2Stream(model).read(text).generate(max_new_tokens=13, **GEN)
    assert torch.equal(torch.cat([first, second], dim=1), one_go)
    assert stream.num_tokens == text.numel() + 13


# ------------------------------------------------------------------ save / load


def test_memory_adapter_and_full_save_load_round_trip(tmp_path):
    model = memory_model("llama")
    model.config._name_or_path = "tiny-llama"
    x = ids(2, 3 * BLOCK + 2)
    ref = run(model, x).logits

    save_memory(model, tmp_path / "adapter")
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["memory_adapter.safetensors", "memory_config.json"]
    again = load_memory(base_model("llama"), tmp_path / "adapter")  # same base weights (seed 0)
    assert again.memory_config == model.memory_config
    torch.testing.assert_close(run(again, x).logits, ref, atol=0, rtol=0)
    info = (tmp_path / "adapter" / "memory_config.json").read_text()
    assert '"base_model_name_or_path": "tiny-llama"' in info and '"LlamaForCausalLM"' in info
    with pytest.raises(ValueError, match="LlamaForCausalLM"):
        load_memory(base_model("qwen2"), tmp_path / "adapter")  # another base model is refused

    model.save_pretrained(tmp_path / "full")
    full = from_pretrained(tmp_path / "full").eval()
    assert isinstance(full, MemoryCausalLM) and full.memory_config == model.memory_config
    torch.testing.assert_close(run(full, x).logits, ref, atol=0, rtol=0)

    memory = run(model, x).memory
    memory.save(tmp_path / "memory.pt")
    loaded = HFMemoryState.load(tmp_path / "memory.pt")
    torch.testing.assert_close(
        run(full, x[:, :5], memory=loaded).logits, run(model, x[:, :5], memory=memory).logits
    )


# ------------------------------------------------------------------ errors


def test_unsupported_models_and_bad_keywords_are_clear_errors():
    t5 = T5ForConditionalGeneration(
        T5Config(vocab_size=VOCAB, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
    )
    with pytest.raises(ValueError, match="T5ForConditionalGeneration"):
        add_memory(t5)
    with pytest.raises(ValueError, match="Linear"):
        add_memory(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="blocksize"):
        add_memory(base_model("llama"), blocksize=8)
    with pytest.raises(ValueError, match="tau"):
        add_memory(base_model("llama"), tau=1.5)
    with pytest.raises(ValueError, match="block_size"):
        add_memory(base_model("llama"), block_size=65)  # longer than max_position_embeddings
    with pytest.raises(ValueError, match="memory_layers"):
        add_memory(base_model("llama"), memory_layers=[2])
    model = add_memory(base_model("llama"), **MEMORY)
    with pytest.raises(ValueError, match="already has a memory"):
        add_memory(model)
    with pytest.raises(ValueError, match="batch size"):
        model(ids(1, 2), memory=model.init_memory(2))
    with pytest.raises(ValueError, match="memory="):
        model(ids(1, 2), cache=model.init_memory(1))


def test_load_model_and_the_passkey_probe_take_any_model(tmp_path):
    from tokenizers import ByteLevelBPETokenizer

    from infinite_former.cli import main
    from infinite_former.hf import InfiniteGPT2LMHeadModel, load_model

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["The grass is green. What is the pass key? 0123456789"] * 20, vocab_size=300)
    bpe.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    config = family_config("llama")
    config.vocab_size = 300
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llama")
    fresh = load_model(tmp_path / "llama", block_size=32, num_basis=16, num_samples=16, num_bins=8)
    assert isinstance(fresh, MemoryCausalLM) and fresh.memory_config.block_size == 32
    fresh.save_pretrained(tmp_path / "mem")
    again = load_model(tmp_path / "mem")  # a folder saved with its memory keeps it
    assert again.memory_config == fresh.memory_config
    assert load_model(tmp_path / "mem", block_size=16).memory_config.block_size == 16  # a reading setting
    with pytest.raises(ValueError, match=r"already has a memory.*\['num_basis'\]"):
        load_model(tmp_path / "mem", num_basis=8)  # the memory's shape is fixed by its weights
    base_model("gpt2").save_pretrained(tmp_path / "gpt2")
    assert isinstance(load_model(tmp_path / "gpt2", **MEMORY), InfiniteGPT2LMHeadModel)

    argv = ["passkey", "--model", str(tmp_path / "mem"), "--tokenizer", str(tmp_path / "tokenizer.json")]
    out = tmp_path / "passkey.json"
    assert main([*argv, "--distances", "10", "40", "--trials", "1", "--prefix", "8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["per_distance"]) == {"10", "40"} and result["stream"] == "InfiniteGPT2Stream"


def test_a_memory_saved_in_the_former_gpt2_format_loads():
    """InfiniteGPT2Memory files had `keep` (per row) instead of `slots`; they load as the same state."""
    model = memory_model("gpt2")
    memory = run(model, ids(2, 2 * BLOCK + 3)).memory
    old = {k: v for k, v in memory.state_dict().items() if k != "slots"}
    old["keep"] = torch.ones(2, dtype=torch.bool)
    loaded = HFMemoryState.from_state_dict(old)
    assert torch.equal(loaded.slots, memory.slots)
    nxt = ids(2, BLOCK, seed=3)
    torch.testing.assert_close(run(model, nxt, loaded).logits, run(model, nxt, memory).logits, atol=0, rtol=0)


def test_partial_blocks_can_be_absorbed_at_a_boundary():
    model = memory_model("llama", sticky=False)
    mem = run(model, ids(2, 3)).memory  # 3 tokens of a block
    assert mem.position == 3 and mem.ltm_tokens.tolist() == [0, 0]
    assert model.absorb_blocks(mem) is mem  # not complete: nothing to absorb
    done = model.absorb_blocks(mem, partial=True)
    assert done.ltm_tokens.tolist() == [3, 3] and done.position == 0
    after = run(model, ids(2, 2, seed=1), memory=done)
    fresh = run(model, ids(2, 2, seed=1))
    assert (after.logits - fresh.logits).abs().max() > 1e-4  # the absorbed tokens are read
    uneven = run(model, ids(2, 3), memory=mem.reset(torch.tensor([True, False]))).memory
    with pytest.raises(ValueError, match="equally many"):
        model.absorb_blocks(uneven, partial=True)
