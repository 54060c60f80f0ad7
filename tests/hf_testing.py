"""Helpers shared by the Hugging Face tests."""

from pathlib import Path

import torch


def save_tiny_gpt2(folder: Path, texts: list[str]) -> Path:
    """A random 2-layer GPT-2 (d 16, 32 positions) with a BPE (300 tokens) trained on texts, saved
    as a GPT-2 folder (model + tokenizer) at folder/gpt2; returns that folder."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from infinite_former.data.tokenizer import train_bpe_tokenizer

    bpe = train_bpe_tokenizer(texts, vocab_size=300)
    vocab = folder / "vocab"
    vocab.mkdir(parents=True)
    bpe.backend.model.save(str(vocab))
    tok = GPT2TokenizerFast(vocab=str(vocab / "vocab.json"), merges=str(vocab / "merges.txt"))
    torch.manual_seed(0)
    cfg = GPT2Config(
        vocab_size=len(tok), n_positions=32, n_embd=16, n_layer=2, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    GPT2LMHeadModel(cfg).save_pretrained(folder / "gpt2")
    tok.save_pretrained(folder / "gpt2")
    return folder / "gpt2"


def feed_one_by_one(model, memory, prompt, steps):
    """Greedy decoding by calling forward with one token at a time: (tokens, logits per step)."""
    tokens, logits = [], []
    with torch.no_grad():
        for t in range(prompt.shape[1]):
            out = model(prompt[:, t : t + 1], memory=memory)
            memory = out.memory
        for _ in range(steps):
            step_logits = out.logits[:, -1]
            nxt = step_logits.argmax(-1, keepdim=True)
            tokens.append(nxt)
            logits.append(step_logits)
            out = model(nxt, memory=memory)
            memory = out.memory
    return torch.cat(tokens, dim=1), torch.stack(logits, dim=1)
