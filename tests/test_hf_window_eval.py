"""hf.training.evaluate_window: the plain model with the previous block in its window."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from infinite_former.data.text import TokenizedCorpus
from infinite_former.hf.training import evaluate_hf_pair, evaluate_window
from infinite_former.training.evaluation import evaluate_documents

L = 8


def _model_and_corpus(lengths):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=2, n_head=2)).eval()
    gen = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 40, (n,), generator=gen) for n in lengths]
    return model, TokenizedCorpus([f"d{i}" for i in range(len(docs))], docs, [n * 3 for n in lengths])


def test_window_equals_a_row_by_row_reference_with_lanes_out_of_step():
    model, corpus = _model_and_corpus([37, 12, 29, 5])  # documents start at different blocks per lane
    got = evaluate_window(model, corpus, L, batch_size=2, eos_id=0)

    def one_row(t, prev):  # batch 1: the block alone, or after the previous one, plainly
        if prev is None:
            return model(t).logits, t
        return model(torch.cat([prev, t], dim=1)).logits[:, L:], t

    class Prev:  # reset at a document's start
        def __init__(self, t):
            self.t = t

        def reset(self, rows):
            return Prev(None if bool(rows.any()) else self.t)

    ref = evaluate_documents(
        lambda t, s: (lambda out: (out[0], Prev(out[1])))(one_row(t, s.t)),
        lambda b: Prev(None),
        corpus,
        1,
        L,
        0,
    )
    assert got["tokens"] == ref["tokens"]
    for name in corpus.names:
        assert got["per_document"][name]["ppl"] == pytest.approx(ref["per_document"][name]["ppl"], rel=1e-5)


def test_window_equals_blocks_alone_for_one_block_documents():
    model, corpus = _model_and_corpus([L - 1, L - 1, L - 1])
    alone = evaluate_hf_pair(None, model, corpus, L, 2, 0)["base"]
    assert evaluate_window(model, corpus, L, 2, 0)["ppl"] == pytest.approx(alone["ppl"], rel=1e-6)
    with pytest.raises(ValueError, match="exceeds the model's 32 positions"):
        evaluate_window(model, corpus, 17, 2, 0)
