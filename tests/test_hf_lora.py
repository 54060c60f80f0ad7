"""LoRA (peft) on the base model + the full memory weights train together (src/infinite_former/hf/lora.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from infinite_former.hf import add_memory
from infinite_former.hf.lora import add_lora

BLOCK = 8


def test_only_lora_and_memory_weights_change():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = add_memory(LlamaForCausalLM(config), block_size=BLOCK, num_basis=16, num_samples=16, num_bins=8)
    peft_model = add_lora(model, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]).train()
    before = {n: p.detach().clone() for n, p in peft_model.named_parameters()}

    groups = model.param_groups(lr=1e-2, memory_lr=5e-2)
    assert [g["lr"] for g in groups] == [1e-2, 5e-2]
    assert all(
        "lora_" in n for n, p in peft_model.named_parameters() if any(p is q for q in groups[0]["params"])
    )
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.ltm.parameters()}
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    x = torch.randint(0, 100, (2, 3 * BLOCK), generator=torch.Generator().manual_seed(1))
    memory = None
    for _ in range(3):
        out = peft_model(input_ids=x, memory=memory, labels=x)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        memory = out.memory.detach()

    changed = {n for n, p in peft_model.named_parameters() if not torch.equal(p.detach(), before[n])}
    lora = {n for n in before if "lora_" in n}
    memory_weights = {n for n in before if ".ltm." in n}
    assert lora and memory_weights
    assert changed == lora | memory_weights  # every LoRA and memory weight moved, nothing else did

    # generate runs through the peft wrapper with the memory
    gen = peft_model.generate(
        input_ids=x[:, :3],
        memory=memory,
        max_new_tokens=4,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=1,
    )
    assert gen.shape == (2, 7)


def test_add_lora_needs_a_memory():
    with pytest.raises(ValueError, match="add_memory"):
        add_lora(torch.nn.Linear(2, 2), r=2)
