"""The support matrix: every feature of add_memory on more transformers v5 decoder families (tiny random
configs, no network). Each cell runs the same check as for Llama/GPT-2 (test_hf_any.py and friends);
docs/hf_support.md is the table of these results."""

from __future__ import annotations

import pytest
import torch

import test_hf_any as any_family
from infinite_former.hf.lora import add_lora
from test_hf_any import BLOCK, MORE_FAMILIES, ids, memory_model
from test_hf_checkpointing import test_checkpointing_gives_the_same_loss_gradients_and_memory as checkpointing
from test_hf_inputs_embeds import (
    test_embeddings_give_the_logits_of_their_ids_in_one_call_and_in_chunks as embeds,
)
from test_hf_training_free import block_attention_is_recomputed
from test_hf_training_free import (
    test_adds_no_weights_starts_as_the_base_model_and_then_reads_the_memory as free,
)

LORA_TARGETS = {"phi3": ["qkv_proj"], "gpt2": ["c_attn"], "gpt_neox": ["query_key_value"]}


def lora_step(family: str) -> None:
    """One training step under LoRA: the adapters and the memory get gradients, the base does not."""
    model = add_lora(memory_model(family), r=2, target_modules=LORA_TARGETS.get(family, ["q_proj", "v_proj"]))
    model.train()
    x = ids(1, 2 * BLOCK + 2)
    model(x, labels=x).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n and float(g.abs().sum()) > 0 for n, g in grads.items() if g is not None)
    assert any(".ltm." in n and float(g.abs().sum()) > 0 for n, g in grads.items() if g is not None)
    assert all("lora_" in n or ".ltm." in n for n in grads)


FEATURES = {
    "forward": any_family.test_starts_equal_to_the_base_model_on_each_block,
    "streaming": any_family.test_chunks_of_1_7_and_all_give_the_same_logits,
    "inputs_embeds": embeds,
    "generate": any_family.test_greedy_generate_equals_a_token_by_token_loop_across_blocks,
    "beam": any_family.test_beam_search_equals_each_row_alone,
    "padding": any_family.test_left_padded_batch_equals_each_row_alone,
    "lora": lora_step,
    "checkpointing": checkpointing,
    "training_free": lambda family: free(family, "gibbs"),
    "training_free_softmax": block_attention_is_recomputed,
}
# cells that are refused, with the reason the error names
UNSUPPORTED = {
    ("phi3", "training_free"): "no separate q_proj/k_proj/v_proj",
    ("gpt_neox", "training_free"): "no separate q_proj/k_proj/v_proj",
    ("phi3", "training_free_softmax"): "no separate q_proj/k_proj/v_proj",
    ("gpt_neox", "training_free_softmax"): "no separate q_proj/k_proj/v_proj",
    ("gemma2", "training_free_softmax"): "caps its scores",
}
# every feature on the new families; on the first five, the cells their own test files leave out
CELLS = [(family, feature) for family in MORE_FAMILIES for feature in FEATURES] + [
    *[(family, "beam") for family in ("qwen2", "mistral", "gpt_neox")],
    *[(family, "padding") for family in ("qwen2", "mistral")],
    *[(family, "lora") for family in ("qwen2", "mistral", "gpt_neox", "gpt2")],
    ("gpt_neox", "training_free"),
    ("gpt_neox", "training_free_softmax"),
]


@pytest.mark.parametrize(("family", "feature"), CELLS)
def test_feature_on_family(family, feature):
    torch.manual_seed(0)
    if (family, feature) in UNSUPPORTED:
        with pytest.raises(ValueError, match=UNSUPPORTED[family, feature]):
            FEATURES[feature](family)
    else:
        FEATURES[feature](family)
