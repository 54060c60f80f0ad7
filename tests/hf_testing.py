"""Helpers shared by the Hugging Face tests."""

import torch


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
