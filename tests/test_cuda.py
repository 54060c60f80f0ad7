"""CUDA tests (``pytest -m cuda``): what the README claims for GPUs, checked on a GPU.

Skipped without CUDA. ``benchmarks/gpu_suite.py`` runs these first. Every test here compares the
GPU result with a CPU reference computed in the same test (float64 where it is the layer's math),
so a failure says which path is wrong: the custom autograd of the continuous attention, sticky
sampling, the Trainer's bf16 autocast, exact resume, the GPT-2 + memory model's generate, and
torch.compile with gradients.

``INFINITE_FORMER_TEST_DEVICE=cpu`` runs the same checks on the CPU (a way to check the tests
themselves on a machine without a GPU; the bf16 Trainer test then runs CPU bf16 autocast).
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from infinite_former import LongTermAttention, LTMConfig
from infinite_former.continuous import gaussian_context
from infinite_former.data.segments import Shard
from infinite_former.data.sorting import SortingConfig, SortingGenerator, SortingStream
from infinite_former.memory import sticky_positions
from infinite_former.models import InfiniteFormerLM, ModelConfig
from infinite_former.training import TrainConfig, Trainer, load_checkpoint

DEVICE = torch.device(os.environ.get("INFINITE_FORMER_TEST_DEVICE", "cuda"))

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda)"
    ),
]

LAYER = dict(d_model=64, n_heads=4, num_basis=32, num_samples=16, widths=(0.05, 0.1), num_bins=16)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def run_layer(ltm: LongTermAttention, qs, xs, device, dtype):
    """Three segments through the layer (absorb, attend); loss on the last; returns out, grads."""
    ltm.zero_grad()
    state = ltm.init_state(qs[0].shape[0], device, dtype)
    leaves = [x.to(device, dtype).requires_grad_() for x in (qs[-1], xs[-1])]
    with torch.no_grad():
        for q, x in zip(qs[:-1], xs[:-1]):
            _, state = ltm(q.to(device, dtype), x.to(device, dtype), state)
    out, state, kl = ltm(*leaves, state, return_kl=True)
    (out.float().square().mean() + 1e-2 * kl.float()).backward()
    grads = {n: p.grad for n, p in ltm.named_parameters()}
    grads["queries"], grads["new_vectors"] = leaves[0].grad, leaves[1].grad
    return out, state, grads


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 6e-2)])
def test_layer_forward_backward_matches_float64_cpu(dtype, tol):
    """Forward and the custom backward of the continuous attention on the device vs float64 CPU."""
    torch.manual_seed(0)
    ltm = LongTermAttention(LTMConfig(**LAYER, sticky=False))  # uniform: no random draws to match
    gen = torch.Generator().manual_seed(1)
    qs = [torch.randn(2, 24, 64, generator=gen) for _ in range(3)]
    xs = [torch.randn(2, 40, 64, generator=gen) for _ in range(3)]
    ref_out, ref_state, ref_grads = run_layer(ltm.double(), qs, xs, "cpu", torch.float64)
    out, state, grads = run_layer(ltm.to(DEVICE, dtype), qs, xs, DEVICE, dtype)
    assert out.device.type == DEVICE.type and out.dtype == dtype
    assert state.coeffs.dtype == torch.float32  # the memory stays in float32 under bf16
    assert rel_err(out, ref_out) <= tol
    assert rel_err(state.coeffs, ref_state.coeffs) <= tol
    for name, ref in ref_grads.items():
        assert grads[name] is not None and torch.isfinite(grads[name]).all(), name
        assert rel_err(grads[name], ref) <= 5 * tol, name


def test_gaussian_context_gradcheck_on_device():
    """The closed-form backward of the fused continuous softmax passes gradcheck on the device (float64)."""
    torch.manual_seed(0)
    ltm = LongTermAttention(LTMConfig(**LAYER)).to(DEVICE)
    opts = dict(device=DEVICE, dtype=torch.float64, requires_grad=True)
    mu = torch.rand(2, 3, 5, **opts)
    sigma2 = (0.01 + 0.05 * torch.rand(2, 3, 5, device=DEVICE, dtype=torch.float64)).requires_grad_()
    values = torch.randn(2, 3, 32, 4, **opts)
    fn = lambda m, s, v: gaussian_context(m, s, v, ltm.basis)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (mu, sigma2, values))


def test_sticky_sampling_on_device():
    """Sticky positions on the device: sorted, in [0, 1], and each bin gets its share p·M of the samples."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    mass = torch.tensor([[0.0, 6.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], device=DEVICE)
    pos = sticky_positions(mass, 64, gen)
    assert pos.device.type == DEVICE.type and pos.shape == (3, 64)
    assert (pos >= 0).all() and (pos <= 1).all() and (pos.diff(dim=-1) >= 0).all()
    counts = torch.stack([torch.histc(p, bins=4, min=0, max=1) for p in pos.cpu()])
    share = torch.tensor([[0.0, 0.75, 0.125, 0.125], [0.25] * 4, [0.25] * 4]) * 64  # empty row: uniform
    assert (counts - share).abs().max() <= 1.0
    # the sticky layer on the device: the bin mass it keeps is the attention mass per bin (H·q per row)
    torch.manual_seed(0)
    ltm = LongTermAttention(LTMConfig(**LAYER, sticky=True)).to(DEVICE)
    state = None
    with torch.no_grad():
        for _ in range(3):
            q, x = torch.randn(2, 8, 64, device=DEVICE), torch.randn(2, 40, 64, device=DEVICE)
            out, state = ltm(q, x, state, generator=gen)
    assert torch.isfinite(out).all() and state.bin_mass.device.type == DEVICE.type
    total = state.bin_mass.sum(-1).cpu()  # Σ over heads and queries of the mass inside [0, 1]
    assert (total > 0).all() and (total <= 4 * 8 + 1e-3).all()


# ------------------------------------------------------------------------------- the trainer

TASK = SortingConfig(length=20, num_symbols=4, seed=0)


def tiny_lm(dropout: float = 0.0, seed: int = 0) -> InfiniteFormerLM:
    torch.manual_seed(seed)
    return InfiniteFormerLM(
        ModelConfig(
            vocab_size=TASK.vocab_size,
            d_model=16,
            n_layers=2,
            n_heads=2,
            d_inner=32,
            dropout=dropout,
            mem_len=8,
            memory_type="infinite_sticky",
            ltm=dict(num_basis=8, num_samples=8, num_bins=8),
        )  # fmt: skip
    )


def sorting_stream(shard: Shard) -> SortingStream:
    return SortingStream(SortingGenerator(TASK), 8, shard)


def train_config(tmp_path, **kw) -> TrainConfig:
    base = dict(steps=6, lr=1e-2, warmup_steps=1, batch_size=4, out_dir=str(tmp_path / "run"))
    base.update(progress=False, tensorboard=False, device=DEVICE.type, precision="fp32")
    return TrainConfig(**{**base, **kw})


def test_trainer_bf16_autocast_loss_falls(tmp_path):
    res = Trainer(
        tiny_lm(), train_config(tmp_path, steps=12, batch_size=8, precision="bf16"), sorting_stream
    ).fit()
    assert res.precision.startswith("bf16")
    losses = torch.tensor(res.losses)
    assert len(res.losses) == 12 and torch.isfinite(losses).all()
    assert losses[-3:].mean() < losses[:3].mean() - 0.15, res.losses
    memory = load_checkpoint(tmp_path / "run")["rank"]["memory"]
    coeffs = [v for k, v in memory.items() if k.endswith("coeffs")]
    assert coeffs and all(c.dtype == torch.float32 and torch.isfinite(c).all() for c in coeffs)


class SigtermAfter:
    """A stream that sends this process a real SIGTERM while its k-th training segment is produced."""

    def __init__(self, factory, k: int) -> None:
        self.factory, self.k = factory, k

    def __call__(self, shard: Shard):
        inner, k = self.factory(shard), self.k

        class _Stream:
            def __iter__(self):
                seen = 0
                for s in inner:
                    seen += s.train
                    if s.train and seen == k:
                        os.kill(os.getpid(), signal.SIGTERM)
                    yield s

            def state_dict(self):
                return inner.state_dict()

            def load_state_dict(self, d):
                inner.load_state_dict(d)

        return _Stream()


def test_resume_on_device_matches_uninterrupted(tmp_path):
    """Stopped by SIGTERM at step 3 and resumed on the device: the uninterrupted run's losses.

    The tolerance allows for non-deterministic CUDA kernels (atomics in some backward passes)."""
    full = Trainer(tiny_lm(dropout=0.1), train_config(tmp_path / "a"), sorting_stream).fit()
    part = Trainer(tiny_lm(dropout=0.1), train_config(tmp_path / "b"), SigtermAfter(sorting_stream, 3)).fit()
    assert part.stopped_by_signal and part.step == 3
    rest = Trainer(tiny_lm(dropout=0.1, seed=123), train_config(tmp_path / "b"), sorting_stream).fit(
        resume=True
    )
    assert rest.step == 6
    torch.testing.assert_close(
        torch.tensor(part.losses + rest.losses), torch.tensor(full.losses), atol=1e-4, rtol=0
    )


# ------------------------------------------------------------------------ GPT-2 + memory (HF)


@pytest.mark.parametrize("sticky", [False, True])
def test_hf_generate_on_device(tmp_path, sticky):
    """GPT-2 + memory: read two blocks, then greedy generate across a block boundary, on the device.

    Uniform sampling: the same tokens and logits as on the CPU. Sticky sampling draws its positions
    from the device's RNG (other numbers than the CPU's): the same seed gives the same generation."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from infinite_former.hf import InfiniteGPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(
            n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=100, bos_token_id=0, eos_token_id=0
        )
    ).save_pretrained(tmp_path)
    model = InfiniteGPT2LMHeadModel.from_pretrained(
        tmp_path, block_size=8, num_basis=16, num_samples=16, sticky=sticky
    ).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.memory_parameters():  # random memory weights, so that the memory changes logits
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    context = torch.randint(0, 100, (2, 19), generator=g)
    prompt = torch.randint(0, 100, (2, 4), generator=g)

    def generate(device):
        m = model.to(device)
        torch.manual_seed(11)
        with torch.no_grad():
            memory = m(context.to(device)).memory
            return m.generate(
                prompt.to(device), memory=memory, max_new_tokens=10, do_sample=False, eos_token_id=None,
                pad_token_id=0, return_dict_in_generate=True, output_logits=True,
            )  # fmt: skip

    ref = generate(DEVICE if sticky else "cpu")
    out = generate(DEVICE)
    assert out.sequences.device.type == DEVICE.type and torch.isfinite(torch.stack(out.logits)).all()
    assert torch.equal(out.sequences.cpu(), ref.sequences.cpu())
    assert rel_err(torch.stack(out.logits, 1), torch.stack(ref.logits, 1)) <= 1e-4
    assert out.memory.num_tokens.tolist() == [19 + 4 + 10 - 1] * 2


# --------------------------------------------------------------------------- torch.compile


def test_compiled_layer_forward_backward_equals_eager():
    """torch.compile of the layer, forward and backward through the custom autograd, on the device."""
    torch.manual_seed(0)
    ltm = LongTermAttention(LTMConfig(**LAYER, sticky=False)).to(DEVICE)
    gen = torch.Generator().manual_seed(1)
    qs = [torch.randn(2, 24, 64, generator=gen) for _ in range(3)]
    xs = [torch.randn(2, 40, 64, generator=gen) for _ in range(3)]
    out, state, grads = run_layer(ltm, qs, xs, DEVICE, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(ltm)
    c_out, c_state, c_grads = run_layer(compiled, qs, xs, DEVICE, torch.float32)
    assert rel_err(c_out, out) <= 1e-5 and rel_err(c_state.coeffs, state.coeffs) <= 1e-5
    for name, ref in grads.items():
        key = name if name in c_grads else f"_orig_mod.{name}"
        assert rel_err(c_grads[key], ref) <= 1e-4, name
