"""Fine-tuning a causal LM with memory under accelerate DDP: 2 CPU processes == 1 process.

Each process takes half the rows of the global batch and carries its rows' memory across steps;
DDP averages the gradients. The losses and the trained weights must match one process that runs
the whole batch. Uniform sampling (sticky=False): sticky sampling draws random numbers per row.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

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
    """
)


def test_two_process_ddp_matches_one_process(tmp_path):
    script = tmp_path / "hf_ddp.py"
    script.write_text(SCRIPT)
    result = tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(result),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(result.read_text())
    assert two["world"] == 2

    sys.path.insert(0, str(tmp_path))
    try:
        import hf_ddp  # the same training function, one process, the whole batch
    finally:
        sys.path.remove(str(tmp_path))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses, weights = hf_ddp.train(slice(None))
    finally:
        torch.set_num_threads(threads)
    assert two["losses"] == pytest.approx(losses, abs=1e-5)
    assert losses[-1] < losses[0]
    assert weights.keys() == two["weights"].keys()
    for name, value in weights.items():
        assert two["weights"][name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
