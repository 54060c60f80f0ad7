"""FSDP2 with memory (hf.fsdp.shard_with_memory): 2 CPU processes == 1 process.

Each decoder layer is sharded together with its memory. Each process takes half the rows of the
global batch and carries its rows' memory across steps; the losses and the trained weights must
match one unsharded process that runs the whole batch. The memory's weights are used both inside
the layers' forward (the read) and outside it (the absorption of a finished block, a call of the
memory module), so a missed all-gather or reduce-scatter would fail or change the numbers.
"""

from __future__ import annotations

import textwrap

import pytest

from distributed_testing import assert_same_training, two_processes_vs_one

SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM
    from infinite_former.hf import add_memory
    from infinite_former.hf.fsdp import shard_with_memory

    BLOCK, ROWS, STEPS = 8, 4, 3

    def train(rows: slice, sharded: bool = False):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        model = add_memory(LlamaForCausalLM(config), block_size=BLOCK, num_basis=16, num_samples=16,
                           num_bins=8, sticky=False, kl_weight=0.1, memory_layers=[0, 2])
        with torch.no_grad():  # a memory whose output is not zero from the start
            for ltm in model.ltm:
                ltm.out.weight.normal_(0, 0.1)
        if sharded:
            from torch.distributed.device_mesh import init_device_mesh
            shard_with_memory(model, mesh=init_device_mesh("cpu", (dist.get_world_size(),)))
        optimizer = torch.optim.AdamW(model.param_groups(lr=1e-2, memory_lr=3e-2))
        data = torch.randint(0, 64, (ROWS, STEPS * 2 * BLOCK), generator=torch.Generator().manual_seed(1))[rows]
        model.train()
        memory, losses = None, []
        for step in range(STEPS):
            x = data[:, step * 2 * BLOCK : (step + 1) * 2 * BLOCK]
            out = model(input_ids=x, memory=memory, labels=x)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            memory = out.memory.detach()
            loss = out.loss.detach().clone()
            if sharded:
                dist.all_reduce(loss)
                loss /= dist.get_world_size()
            losses.append(float(loss))
        weights = {}
        for name, p in model.named_parameters():
            full = p.full_tensor() if hasattr(p, "full_tensor") else p
            weights[name] = float(full.detach().double().sum())
        return losses, weights

    if __name__ == "__main__":
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        half = ROWS // world
        losses, weights = train(slice(rank * half, (rank + 1) * half), sharded=True)
        if rank == 0:
            with open(sys.argv[1], "w") as f:
                json.dump({"losses": losses, "weights": weights, "world": world}, f)
        # leave together: a rank exiting with the process group alive aborts in gloo's teardown
        dist.barrier()
        dist.destroy_process_group()
    """
)


def test_two_process_fsdp_matches_one_process(tmp_path):
    two, losses, weights = two_processes_vs_one(tmp_path, "hf_fsdp", SCRIPT)
    assert_same_training(two, losses, weights)
    assert any(name.startswith("ltm.") for name in weights)  # the memories trained under FSDP too


def test_shard_with_memory_refuses_a_model_without_memory():
    from torch import nn

    from infinite_former.hf.fsdp import shard_with_memory

    with pytest.raises(ValueError, match="model with memory"):
        shard_with_memory(nn.Linear(2, 2))
