"""The toy memory type models/mean.py, run by name like the built-in ones."""

import torch

from infinite_former.models import InfiniteFormerLM, ModelConfig


@torch.no_grad()
def test_mean_memory_holds_the_mean_of_what_left_the_stm():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, d_inner=32, dropout=0.0, mem_len=4,
                      memory_type="mean")  # fmt: skip
    model = InfiniteFormerLM(cfg).eval()
    tokens = torch.randint(0, 11, (2, 20))
    state = None
    for seg in tokens.split(5, dim=1):  # the first 16 tokens leave the STM of 4
        out, state = model(seg, state)
    assert state.count.tolist() == [16, 16]
    torch.testing.assert_close(state.sums[0] / 16, model.embed(tokens[:, :16]).mean(1, keepdim=True))
