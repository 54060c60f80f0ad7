"""Fine-tuning a causal LM with memory under accelerate DDP: 2 CPU processes == 1 process.

Each process takes half the rows of the global batch and carries its rows' memory across steps;
DDP averages the gradients. The losses and the trained weights must match one process that runs
the whole batch. Uniform sampling (sticky=False): sticky sampling draws random numbers per row.
"""

from __future__ import annotations

import textwrap

from distributed_testing import assert_same_training, two_processes_vs_one

SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from accelerate import Accelerator
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from infinite_former.hf import add_memory

    BLOCK, ROWS, STEPS = 8, 4, 3

    def train(rows: slice, accelerator=None):
        torch.manual_seed(0)
        config = GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, max_position_embeddings=64)
        model = add_memory(GPTNeoXForCausalLM(config), block_size=BLOCK, num_basis=16, num_samples=16,
                           num_bins=8, sticky=False, kl_weight=0.1)
        with torch.no_grad():  # a memory whose output is not zero from the start
            model.ltm[0].out.weight.normal_(0, 0.1)
        optimizer = torch.optim.AdamW(model.param_groups(lr=1e-2, memory_lr=3e-2))
        data = torch.randint(0, 64, (ROWS, STEPS * 2 * BLOCK), generator=torch.Generator().manual_seed(1))[rows]
        wrapped = model
        if accelerator is not None:
            wrapped, optimizer = accelerator.prepare(model, optimizer)
        model.train()
        memory, losses = None, []
        for step in range(STEPS):
            x = data[:, step * 2 * BLOCK : (step + 1) * 2 * BLOCK]
            out = wrapped(input_ids=x, memory=memory, labels=x)
            (accelerator.backward(out.loss) if accelerator is not None else out.loss.backward())
            optimizer.step()
            optimizer.zero_grad()
            memory = out.memory.detach()
            loss = out.loss.detach()[None]
            losses.append(float(accelerator.gather(loss).mean() if accelerator is not None else loss))
        weights = {n: float(p.detach().double().sum()) for n, p in model.named_parameters()}
        return losses, weights

    if __name__ == "__main__":
        acc = Accelerator(cpu=True)
        half = ROWS // acc.num_processes
        losses, weights = train(slice(acc.process_index * half, (acc.process_index + 1) * half), acc)
        if acc.is_main_process:
            json.dump({"losses": losses, "weights": weights, "world": acc.num_processes}, open(sys.argv[1], "w"))
        # leave together: a rank exiting with the process group alive aborts in gloo's teardown
        acc.wait_for_everyone()
        torch.distributed.destroy_process_group()
    """
)


def test_two_process_ddp_matches_one_process(tmp_path):
    two, losses, weights = two_processes_vs_one(tmp_path, "hf_ddp", SCRIPT)
    assert_same_training(two, losses, weights)
