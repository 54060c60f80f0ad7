"""inputs_embeds on models with memory (hf/causal_lm.py, hf/streaming.py): embeddings give the
logits of the ids they came from, in one call, in chunks, in a stream and in generate."""

from __future__ import annotations

import pytest
import torch

from infinite_former.hf import InfiniteGPT2Stream
from test_hf_any import BLOCK, FAMILIES, ids, memory_model

GEN = dict(eos_token_id=None, pad_token_id=1, do_sample=False)


def embed(model, x):
    with torch.no_grad():
        return model.get_input_embeddings()(x)


def chunked(model, x, size, name):
    torch.manual_seed(0)  # sticky sampling draws random numbers
    memory, parts = None, []
    with torch.no_grad():
        for s in range(0, x.shape[1], size):
            out = model(**{name: x[:, s : s + size]}, memory=memory)
            memory, parts = out.memory, parts + [out.logits]
    return torch.cat(parts, dim=1), memory


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_give_the_logits_of_their_ids_in_one_call_and_in_chunks(family):
    model = memory_model(family)
    x = ids(2, 3 * BLOCK + 5, seed=1)
    e = embed(model, x)
    whole, memory = chunked(model, x, x.shape[1], "input_ids")
    assert memory.ltm_tokens.tolist() == [3 * BLOCK] * 2
    for size in (x.shape[1], 7, 1):
        logits, _ = chunked(model, e, size, "inputs_embeds")
        torch.testing.assert_close(logits, whole, atol=1e-4, rtol=1e-4)
    other, _ = chunked(model, e + 0.5, x.shape[1], "inputs_embeds")
    assert (other - whole).abs().max() > 1e-3  # the embeddings are what the model reads


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_generate_from_embeddings_equals_generate_from_ids(family):
    model = memory_model(family)
    memory = chunked(model, ids(2, 2 * BLOCK + 3, seed=2), 2 * BLOCK + 3, "input_ids")[1]
    prompt = ids(2, 6, seed=3)
    kw = dict(
        memory=memory, max_new_tokens=2 * BLOCK, return_dict_in_generate=True, output_logits=True, **GEN
    )
    torch.manual_seed(0)
    from_ids = model.generate(prompt, **kw)
    torch.manual_seed(0)
    from_embeds = model.generate(inputs_embeds=embed(model, prompt), **kw)
    assert torch.equal(from_embeds.sequences, from_ids.sequences[:, prompt.shape[1] :])
    torch.testing.assert_close(
        torch.stack(from_embeds.logits), torch.stack(from_ids.logits), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(from_embeds.memory.ltm[0].coeffs, from_ids.memory.ltm[0].coeffs)


def test_a_stream_reads_and_generates_from_embeddings():
    model = memory_model("llama")
    book, question = ids(1, 3 * BLOCK + 2, seed=4), ids(1, 4, seed=5)
    streams = [InfiniteGPT2Stream(model) for _ in range(3)]
    torch.manual_seed(0)
    streams[0].read(book)
    want = streams[0].generate(question, max_new_tokens=BLOCK)
    torch.manual_seed(0)
    streams[1].read(embed(model, book)[0])  # (T, e)
    got = streams[1].generate(question, max_new_tokens=BLOCK)  # ids after embeddings
    torch.manual_seed(0)
    streams[2].read(book[:, :5]).read(embed(model, book[:, 5:]))  # embeddings after ids
    got_embedded_prompt = streams[2].generate(embed(model, question), max_new_tokens=BLOCK)
    assert torch.equal(got, want) and torch.equal(got_embedded_prompt, want)
    assert streams[1].num_tokens == streams[0].num_tokens == 3 * BLOCK + 2 + 4 + BLOCK


def test_bad_embeddings_are_clear_errors():
    model = memory_model("llama")
    x = ids(1, 4)
    with pytest.raises(ValueError, match="not both"):
        model(x, inputs_embeds=embed(model, x))
    with pytest.raises(ValueError, match=r"inputs_embeds must be a \(batch, T, 32\)"):
        model(inputs_embeds=torch.zeros(1, 4, 16))
    with pytest.raises(ValueError, match="at least one token"):
        model(inputs_embeds=torch.zeros(1, 0, 32))
    with pytest.raises(ValueError, match="embeddings must be"):
        InfiniteGPT2Stream(model).read(torch.zeros(4, 16))
