"""Precision as a setting (issue 17): fp32 | bf16 | auto, and the memory's float32 islands."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from infinite_former import LongTermAttention, LTMConfig
from infinite_former.training import TrainConfig
from infinite_former.training.precision import autocast, resolve_precision

PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default}


class ProductDtypes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in PRODUCTS:
            self.dtypes.append(args[-1].dtype)
        return func(*args, **(kwargs or {}))


def test_resolve_precision_requested_cuda_and_cpu_auto():
    assert resolve_precision("fp32", "cpu") == ("fp32", "requested")
    assert resolve_precision("bf16", "cpu") == ("bf16", "requested")
    assert resolve_precision("auto", "cuda")[0] == "bf16"  # (decided without touching the device)
    choice, why = resolve_precision("auto", "cpu")  # measured: either is right, the log says why
    assert choice in ("fp32", "bf16") and "CPU flags" in why and "matmul" in why
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="half")


def test_bf16_autocast_keeps_the_memory_update_and_densities_in_float32():
    torch.manual_seed(0)
    ltm = LongTermAttention(LTMConfig(d_model=16, n_heads=2, num_basis=16, num_samples=16, num_bins=8))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 12, 16, generator=gen)
    with autocast("bf16", "cpu")():
        state = ltm.update(ltm.init_state(2), x)
        with ProductDtypes() as update:  # the contraction + refit (sticky: ψ(s) B, then G_oldᵀ X̄)
            state = ltm.update(state, x, generator=gen)
        mu, sigma2, values = ltm.densities(x, state)
        out, _ = ltm(x, None, state)
    assert state.coeffs.dtype == torch.float32
    # the gate's projection follows autocast (bf16); every product of the ridge fit is float32
    assert update.dtypes.count(torch.bfloat16) == 1 and update.dtypes.count(torch.float32) >= 3, update.dtypes
    assert mu.dtype == sigma2.dtype == torch.float32
    assert values.dtype == out.dtype == torch.bfloat16  # the value projection and the output: bf16


def test_sticky_update_and_layer_step_trace_without_graph_breaks():
    """torch.compile sees the hot path (sticky sampling + branch-free update, then the read with its
    KL and bin mass) as one graph: no host reads (issue 17)."""
    torch.manual_seed(0)
    ltm = LongTermAttention(LTMConfig(d_model=16, n_heads=2, num_basis=16, num_samples=16, num_bins=8))
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        _, state = ltm(x, x, None)  # a memory with sticky bin mass
        ltm.update(state, x)  # builds the layout's cached ridge operators (once per layout, not hot)
    for fn, args in ((ltm.update, (state, x)), (lambda q, v, s: ltm(q, v, s, return_kl=True), (x, x, state))):
        torch._dynamo.reset()
        explained = torch._dynamo.explain(fn)(*args)
        assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "command",
    [["sort"], ["lm", "train", "--data", "d"], ["lm", "finetune", "--data", "d"], ["lm", "eval"],
     ["dialogue", "train", "--data", "d"], ["dialogue", "eval", "--run", "r"]],
)  # fmt: skip
def test_every_training_and_eval_command_takes_precision(command):
    from infinite_former.cli import build_parser

    parser = build_parser()
    assert parser.parse_args([*command, "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):  # argparse names the flag and the choices
        parser.parse_args([*command, "--precision", "fp16"])
    if command == ["sort"]:  # the flag reaches the settings and the Trainer's config
        from infinite_former.experiments.sort import sort_settings_from_args

        settings = sort_settings_from_args(parser.parse_args(["sort", "--precision", "bf16"]))
        assert settings.train_config("check").precision == "bf16"


@pytest.mark.parametrize("legacy, precision", [(True, "bf16"), (False, "fp32"), ("auto", "auto")])
def test_saved_sort_settings_with_bf16_load_as_precision(legacy, precision):
    from infinite_former.experiments.sort import SortSettings

    saved = SortSettings(steps=3).to_dict()  # the current format, saved before precision existed
    del saved["precision"]
    saved["bf16"] = legacy
    assert SortSettings.from_dict(saved).precision == precision
    with pytest.raises(ValueError, match="precision"):
        SortSettings.from_dict({**SortSettings().to_dict(), "precision": "fp16"})
